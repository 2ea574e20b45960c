"""``vlkit webui``: a chat page in the browser, for a model in-process or a running OpenAI server.

The page (``static/``) is a client of the OpenAI chat API: in-process, it is served beside
vlkit's own OpenAI app (:func:`vlkit.serve.create_app`) on one port; with ``--server URL``,
a small proxy forwards the page's API calls to that server (adding the API key server-side, so
it never reaches the browser). See docs/webui.md.
"""

from vlkit.webui.app import (
    WebUIInfo,
    create_local_app,
    create_remote_app,
    is_random_weight_checkpoint,
    serve_page,
)

__all__ = ["WebUIInfo", "create_local_app", "create_remote_app", "is_random_weight_checkpoint", "serve_page"]
