// vlkit's chat page: a client of the OpenAI chat API served beside it (/v1/chat/completions).
// Each tab keeps its own history; the server batches the tabs' requests together.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const state = { model: "", history: [], pending: [], controller: null, busy: false, reading: 0 };

  async function loadInfo() {
    try {
      const info = await (await fetch("/webui/info")).json();
      state.model = info.model || "";
      $("model-name").textContent = info.model || "(unknown model)";
      $("model-family").textContent = info.family ? `family: ${info.family}` : "";
      $("random-badge").hidden = !info.random_weights;
      $("random-note").hidden = !info.random_weights;
      $("backend").textContent = info.backend === "in-process" ? "in-process engine" : `server: ${info.backend}`;
      if (info.max_new_tokens) $("max-tokens").value = info.max_new_tokens;
      document.body.dataset.ready = "1";
    } catch (e) {
      showError(`cannot read the model's details: ${e.message || e}`);
    }
  }

  // ---- rendering -------------------------------------------------------------------------
  function renderTurn(role, text, images) {
    const el = document.createElement("div");
    el.className = `turn ${role}`;
    if (images && images.length) {
      const box = document.createElement("div");
      box.className = "images";
      for (const url of images) {
        const img = document.createElement("img");
        img.src = url;
        img.alt = "attached image";
        box.appendChild(img);
      }
      el.appendChild(box);
    }
    const t = document.createElement("div");
    t.className = "text";
    t.textContent = text;
    el.appendChild(t);
    $("chat").appendChild(el);
    scrollDown();
    return el;
  }

  function setMeta(el, text) {
    let m = el.querySelector(".meta");
    if (!m) {
      m = document.createElement("div");
      m.className = "meta";
      el.appendChild(m);
    }
    m.textContent = text;
  }

  function showError(message) {
    const el = renderTurn("error", message, []);
    el.setAttribute("role", "alert");
    return el;
  }

  function scrollDown() {
    const chat = $("chat");
    chat.scrollTop = chat.scrollHeight;
  }

  function setBusy(busy) {
    state.busy = busy;
    $("send").disabled = busy;
    $("stop").disabled = !busy;
    const last = state.history[state.history.length - 1];
    $("regenerate").disabled = busy || !last || last.role !== "assistant";
    $("status").textContent = busy ? "generating…" : "";
  }

  // ---- attachments -----------------------------------------------------------------------
  function addFiles(files) {
    for (const file of files) {
      if (!file.type || !file.type.startsWith("image/")) {
        showError(`${file.name || "the pasted item"} is not an image (${file.type || "unknown type"}): ` +
                  "attach PNG, JPEG, WebP or GIF files");
        continue;
      }
      state.reading += 1;
      const reader = new FileReader();
      reader.onload = () => {
        state.pending.push({ name: file.name, url: reader.result });
        renderAttachments();
      };
      reader.onerror = () => showError(`cannot read ${file.name}: ${reader.error}`);
      reader.onloadend = () => { state.reading -= 1; };
      reader.readAsDataURL(file);
    }
  }

  function renderAttachments() {
    const box = $("attachments");
    box.textContent = "";
    state.pending.forEach((p, i) => {
      const d = document.createElement("div");
      d.className = "thumb";
      const img = document.createElement("img");
      img.src = p.url;
      img.alt = p.name || "image";
      img.title = p.name || "";
      const x = document.createElement("button");
      x.type = "button";
      x.textContent = "×";
      x.title = "remove";
      x.onclick = () => { state.pending.splice(i, 1); renderAttachments(); };
      d.append(img, x);
      box.appendChild(d);
    });
  }

  // ---- settings --------------------------------------------------------------------------
  function settings() {
    const num = (id, lo, hi, name, integer) => {
      const v = Number($(id).value);
      if (!Number.isFinite(v) || v < lo || v > hi || (integer && !Number.isInteger(v))) {
        throw new Error(`${name} must be ${integer ? "an integer" : "a number"} from ${lo} to ${hi}`);
      }
      return v;
    };
    return {
      max_tokens: num("max-tokens", 1, 1e9, "max new tokens", true),
      temperature: num("temperature", 0, 2, "temperature", false),
      top_p: num("top-p", 0.000001, 1, "top-p", false),
      ignore_eos: $("ignore-eos").checked,
    };
  }

  async function errorText(resp) {
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) return body.error.message;
      if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (e) { /* not JSON */ }
    return `${resp.status} ${resp.statusText}`;
  }

  // ---- a turn ----------------------------------------------------------------------------
  async function send(ev) {
    if (ev) ev.preventDefault();
    if (state.busy) return;
    if (state.reading > 0) { setTimeout(send, 50); return; }
    const text = $("prompt").value.trim();
    if (!text && !state.pending.length) return;
    const content = state.pending.map((p) => ({ type: "image_url", image_url: { url: p.url } }));
    if (text) content.push({ type: "text", text });
    const el = renderTurn("user", text, state.pending.map((p) => p.url));
    state.history.push({ role: "user", content, el });
    $("prompt").value = "";
    state.pending = [];
    renderAttachments();
    await complete();
  }

  async function complete() {
    let params;
    try {
      params = settings();
    } catch (e) {
      failLastUser(e.message);
      return;
    }
    const messages = state.history.map((m) => ({ role: m.role, content: m.content }));
    const bubble = renderTurn("assistant", "", []);
    bubble.classList.add("streaming");
    bubble.dataset.state = "streaming";
    const controller = new AbortController();
    state.controller = controller;
    setBusy(true);
    let text = "", finish = null, stopped = false, error = null, chunks = 0;
    try {
      const body = { messages, stream: true, ...params };
      if (state.model) body.model = state.model;
      const resp = await fetch("/v1/chat/completions", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body), signal: controller.signal,
      });
      if (!resp.ok) {
        error = await errorText(resp);
      } else {
        const reader = resp.body.getReader();
        const decoder = new TextDecoder();
        let buf = "";
        read: for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const event = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            for (const line of event.split("\n")) {
              if (!line.startsWith("data:")) continue;
              const data = line.slice(5).trim();
              if (data === "[DONE]") break read;
              const obj = JSON.parse(data);
              if (obj.error) { error = obj.error.message || "the server failed"; continue; }
              for (const ch of obj.choices || []) {
                if (ch.delta && ch.delta.content) {
                  text += ch.delta.content;
                  chunks += 1;
                  bubble.querySelector(".text").textContent = text;
                  bubble.dataset.chunks = String(chunks);
                  scrollDown();
                }
                if (ch.finish_reason) finish = ch.finish_reason;
              }
            }
          }
        }
      }
    } catch (e) {
      if (e.name === "AbortError") stopped = true;
      else error = e.message || String(e);
    } finally {
      state.controller = null;
      bubble.classList.remove("streaming");
    }
    if (error && !stopped) {
      bubble.remove();
      failLastUser(error);
    } else {
      bubble.dataset.state = stopped ? "stopped" : "done";
      if (finish) bubble.dataset.finish = finish;
      setMeta(bubble, stopped ? "stopped" : finish === "length" ? "stopped at max new tokens" : "");
      state.history.push({ role: "assistant", content: text, el: bubble });
    }
    setBusy(false);
  }

  // The request of the last user turn failed: show why, and take the turn out of the history so
  // that the conversation goes on as if it had not been sent.
  function failLastUser(message) {
    const last = state.history[state.history.length - 1];
    if (last && last.role === "user") {
      state.history.pop();
      last.el.classList.add("failed");
      last.el.title = "not sent: the request failed";
    }
    showError(message);
    setBusy(false);
  }

  function stop() {
    if (state.controller) state.controller.abort();
  }

  async function regenerate() {
    if (state.busy) return;
    const last = state.history[state.history.length - 1];
    if (!last || last.role !== "assistant") return;
    state.history.pop();
    last.el.remove();
    await complete();
  }

  function clearAll() {
    stop();
    state.history = [];
    state.pending = [];
    $("chat").textContent = "";
    renderAttachments();
    setBusy(false);
  }

  // ---- wiring ----------------------------------------------------------------------------
  $("composer").addEventListener("submit", send);
  $("stop").addEventListener("click", stop);
  $("regenerate").addEventListener("click", regenerate);
  $("clear").addEventListener("click", clearAll);
  $("file").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("prompt").addEventListener("paste", (e) => {
    const files = [...(e.clipboardData ? e.clipboardData.items : [])]
      .filter((it) => it.kind === "file").map((it) => it.getAsFile()).filter(Boolean);
    if (files.length) { e.preventDefault(); addFiles(files); }
  });
  const composer = $("composer");
  document.addEventListener("dragover", (e) => {
    e.preventDefault();
    composer.classList.add("dragging");
    $("drop-hint").hidden = false;
  });
  document.addEventListener("dragleave", (e) => {
    if (e.relatedTarget === null) { composer.classList.remove("dragging"); $("drop-hint").hidden = true; }
  });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    composer.classList.remove("dragging");
    $("drop-hint").hidden = true;
    if (e.dataTransfer && e.dataTransfer.files.length) addFiles(e.dataTransfer.files);
  });
  setBusy(false);
  loadInfo();
})();
