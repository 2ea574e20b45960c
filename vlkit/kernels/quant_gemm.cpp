// vlkit's CPU int4 weight-only matmul for few rows (decode): y = x @ W^T with W stored as 4-bit
// codes u (0..15), one fp32 scale s and zero z per group of input channels:
//     W[n, k] = (u[n, k] - 8) * s[n, g] + z[n, g],    g = k / group
// x is bf16; products are summed in fp32 by AVX512-BF16's vdpbf16ps, so the result is the
// dequantized weight's product up to fp32 summation order (no activation quantization).
//
// Codes are packed in blocks of 64 input channels, 32 bytes a block: byte j holds channel
// k0 + j in its low nibble and k0 + 32 + j in its high nibble, so that one 256-bit load widened
// to 16-bit lanes gives, after a mask and a shift, the two runs of 32 channels in x's order; a
// 16-entry table (vpermw) turns codes into the bf16 values u - 8.
//
// Built at run time by vlkit/kernels/build.py (plain g++, no ninja) and loaded with
// torch.ops.load_library; vlkit/layers/quant.py uses it when the CPU has AVX512-BF16.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>
#include <cstdint>
#include <cstring>
#include <optional>

namespace {

constexpr int64_t kBlock = 64;  // input channels per 32-byte block
constexpr int kMaxRows = 8;     // rows of x per pass (accumulators held in registers)
constexpr int64_t kTile = 64;   // output channels per tile (their weights stay in L2 across passes)

template <int MB>
void rows_pass(const uint16_t* x, int64_t ldx, const uint8_t* nib, const float* scales,
               const float* zeros, const float* xsum, int64_t K, int64_t G, int64_t group,
               int64_t n0, int64_t n1, float* y, int64_t ldy) {
  // bf16 bit patterns of -8 .. 7 at indices 0 .. 15 (the upper 16 entries are never indexed)
  alignas(64) uint16_t table[32];
  for (int i = 0; i < 32; ++i) {
    float v = static_cast<float>((i & 15) - 8);
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    table[i] = static_cast<uint16_t>(bits >> 16);  // exact: small integers
  }
  const __m512i lut = _mm512_load_si512(table);
  const __m512i low4 = _mm512_set1_epi16(0x000F);
  const int64_t row_bytes = K / 2;
  const int64_t blocks_per_group = group / kBlock;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = nib + n * row_bytes;
    const float* s = scales + n * G;
    __m512 acc[MB];
    for (int m = 0; m < MB; ++m) acc[m] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
      __m512 part[MB];
      for (int m = 0; m < MB; ++m) part[m] = _mm512_setzero_ps();
      for (int64_t b = 0; b < blocks_per_group; ++b) {
        const int64_t k0 = (g * blocks_per_group + b) * kBlock;
        const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k0 / 2));
        const __m512i wide = _mm512_cvtepu8_epi16(packed);
        const __m512i lo = _mm512_and_si512(wide, low4);
        const __m512i hi = _mm512_srli_epi16(wide, 4);
        const __m512bh wlo = (__m512bh)_mm512_permutexvar_epi16(lo, lut);
        const __m512bh whi = (__m512bh)_mm512_permutexvar_epi16(hi, lut);
        for (int m = 0; m < MB; ++m) {
          const uint16_t* xr = x + m * ldx + k0;
          const __m512bh xlo = (__m512bh)_mm512_loadu_si512(xr);
          const __m512bh xhi = (__m512bh)_mm512_loadu_si512(xr + 32);
          part[m] = _mm512_dpbf16_ps(part[m], xlo, wlo);
          part[m] = _mm512_dpbf16_ps(part[m], xhi, whi);
        }
      }
      const __m512 sg = _mm512_set1_ps(s[g]);
      for (int m = 0; m < MB; ++m) acc[m] = _mm512_fmadd_ps(part[m], sg, acc[m]);
    }
    for (int m = 0; m < MB; ++m) {
      float r = _mm512_reduce_add_ps(acc[m]);
      if (zeros != nullptr) {
        const float* z = zeros + n * G;
        const float* xs = xsum + m * G;
        for (int64_t g = 0; g < G; ++g) r += z[g] * xs[g];
      }
      y[m * ldy + n] = r;
    }
  }
}

using PassFn = void (*)(const uint16_t*, int64_t, const uint8_t*, const float*, const float*,
                        const float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*, int64_t);
constexpr PassFn kPasses[kMaxRows] = {rows_pass<1>, rows_pass<2>, rows_pass<3>, rows_pass<4>,
                                      rows_pass<5>, rows_pass<6>, rows_pass<7>, rows_pass<8>};

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& nib, const at::Tensor& scales,
                       const std::optional<at::Tensor>& zeros, int64_t group) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.is_contiguous(),
              "int4_linear: x must be a contiguous 2-D bfloat16 tensor");
  TORCH_CHECK(nib.dim() == 2 && nib.scalar_type() == at::kByte && nib.is_contiguous(),
              "int4_linear: codes must be a contiguous 2-D uint8 tensor");
  const int64_t M = x.size(0), K = x.size(1), N = nib.size(0);
  TORCH_CHECK(nib.size(1) * 2 == K, "int4_linear: codes hold ", nib.size(1) * 2, " channels, x has ", K);
  TORCH_CHECK(group % kBlock == 0 && K % group == 0, "int4_linear: group ", group,
              " must be a multiple of 64 dividing K=", K);
  const int64_t G = K / group;
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.size(0) == N &&
              scales.size(1) == G, "int4_linear: scales must be contiguous float32 [N, K / group]");
  const float* zp = nullptr;
  at::Tensor xsum;
  if (zeros.has_value() && zeros->defined()) {
    TORCH_CHECK(zeros->scalar_type() == at::kFloat && zeros->is_contiguous() && zeros->size(0) == N &&
                zeros->size(1) == G, "int4_linear: zeros must be contiguous float32 [N, K / group]");
    zp = zeros->data_ptr<float>();
    xsum = x.to(at::kFloat).view({M, G, group}).sum(-1).contiguous();  // [M, G]
  }
  at::Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const uint8_t* wp = nib.data_ptr<uint8_t>();
  const float* sp = scales.data_ptr<float>();
  const float* xsp = zp ? xsum.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  // grain: at least 16 output channels (K / 2 bytes each) per task
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    // a tile of output channels at a time, every row of x over it: the tile's codes are read
    // from memory once and from the cache for the next rows
    for (int64_t t0 = n0; t0 < n1; t0 += kTile) {
      const int64_t t1 = std::min<int64_t>(n1, t0 + kTile);
      for (int64_t m0 = 0; m0 < M; m0 += kMaxRows) {
        const int64_t mb = std::min<int64_t>(kMaxRows, M - m0);
        kPasses[mb - 1](xp + m0 * K, K, wp, sp, zp, xsp ? xsp + m0 * G : nullptr, K, G, group, t0, t1,
                        yp + m0 * N, N);
      }
    }
  });
  return y.to(at::kBFloat16);
}

// int8 weight-only, per-output-channel scale: y = (x @ q^T) * scale, q int8 [N, K] row-major
// (the layout PyTorch's _weight_int8pack_mm takes). Each 32 channels of a row are widened to
// fp32, converted to bf16 (exact: |q| <= 127) and multiplied with vdpbf16ps in fp32 sums.
template <int MB>
void int8_rows_pass(const uint16_t* x, int64_t ldx, const int8_t* q, const float* scale, int64_t K,
                    int64_t n0, int64_t n1, float* y, int64_t ldy) {
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = q + n * K;
    __m512 acc[MB];
    for (int m = 0; m < MB; ++m) acc[m] = _mm512_setzero_ps();
    for (int64_t k0 = 0; k0 < K; k0 += 32) {
      const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k0))));
      const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k0 + 16))));
      const __m512bh wb = _mm512_cvtne2ps_pbh(hi, lo);  // channels k0 .. k0 + 31 in order
      for (int m = 0; m < MB; ++m) {
        const __m512bh xb = (__m512bh)_mm512_loadu_si512(x + m * ldx + k0);
        acc[m] = _mm512_dpbf16_ps(acc[m], xb, wb);
      }
    }
    for (int m = 0; m < MB; ++m) y[m * ldy + n] = _mm512_reduce_add_ps(acc[m]) * scale[n];
  }
}

using Int8PassFn = void (*)(const uint16_t*, int64_t, const int8_t*, const float*, int64_t, int64_t, int64_t,
                            float*, int64_t);
constexpr Int8PassFn kInt8Passes[kMaxRows] = {int8_rows_pass<1>, int8_rows_pass<2>, int8_rows_pass<3>,
                                              int8_rows_pass<4>, int8_rows_pass<5>, int8_rows_pass<6>,
                                              int8_rows_pass<7>, int8_rows_pass<8>};

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.is_contiguous(),
              "int8_linear: x must be a contiguous 2-D bfloat16 tensor");
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kChar && q.is_contiguous(),
              "int8_linear: q must be a contiguous 2-D int8 tensor");
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  TORCH_CHECK(q.size(1) == K && K % 32 == 0, "int8_linear: q has ", q.size(1), " channels, x has ", K,
              " (a multiple of 32 is needed)");
  TORCH_CHECK(scale.numel() == N, "int8_linear: one scale per output channel");
  const at::Tensor s = scale.to(at::kFloat).contiguous();
  at::Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = s.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t t0 = n0; t0 < n1; t0 += kTile) {
      const int64_t t1 = std::min<int64_t>(n1, t0 + kTile);
      for (int64_t m0 = 0; m0 < M; m0 += kMaxRows) {
        const int64_t mb = std::min<int64_t>(kMaxRows, M - m0);
        kInt8Passes[mb - 1](xp + m0 * K, K, qp, sp, K, t0, t1, yp + m0 * N, N);
      }
    }
  });
  return y.to(at::kBFloat16);
}

// The dense bf16 weight [N, K] the codes stand for (for prefill: dequantize once, then one
// oneDNN GEMM over all the step's rows). Same formula as int4_linear, rounded to bf16.
at::Tensor int4_dequantize(const at::Tensor& nib, const at::Tensor& scales,
                           const std::optional<at::Tensor>& zeros, int64_t group) {
  TORCH_CHECK(nib.dim() == 2 && nib.scalar_type() == at::kByte && nib.is_contiguous(),
              "int4_dequantize: codes must be a contiguous 2-D uint8 tensor");
  const int64_t N = nib.size(0), K = nib.size(1) * 2;
  TORCH_CHECK(group % kBlock == 0 && K % group == 0, "int4_dequantize: bad group ", group);
  const int64_t G = K / group;
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.size(0) == N &&
              scales.size(1) == G, "int4_dequantize: scales must be contiguous float32 [N, K / group]");
  const bool has_z = zeros.has_value() && zeros->defined();
  if (has_z) {
    TORCH_CHECK(zeros->scalar_type() == at::kFloat && zeros->is_contiguous() && zeros->size(0) == N &&
                zeros->size(1) == G, "int4_dequantize: zeros must be contiguous float32 [N, K / group]");
  }
  at::Tensor out = at::empty({N, K}, nib.options().dtype(at::kBFloat16));
  const uint8_t* wp = nib.data_ptr<uint8_t>();
  const float* sp = scales.data_ptr<float>();
  const float* zp = has_z ? zeros->data_ptr<float>() : nullptr;
  auto* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const __m512i low4 = _mm512_set1_epi32(0x0F);
  const __m512 eight = _mm512_set1_ps(8.0f);
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* w = wp + n * (K / 2);
      uint16_t* o = op + n * K;
      for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
        const int64_t g = k0 / group;
        const __m512 s = _mm512_set1_ps(sp[n * G + g]);
        const __m512 z = _mm512_set1_ps(zp ? zp[n * G + g] : 0.0f);
        for (int half = 0; half < 2; ++half) {  // bytes j = 0..15 and 16..31 of the block
          const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k0 / 2 + 16 * half));
          const __m512i b32 = _mm512_cvtepu8_epi32(bytes);
          const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(b32, low4));
          const __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(b32, 4));
          const __m512 vlo = _mm512_fmadd_ps(_mm512_sub_ps(lo, eight), s, z);
          const __m512 vhi = _mm512_fmadd_ps(_mm512_sub_ps(hi, eight), s, z);
          // channels k0 + 16 * half + i (low nibbles) and k0 + 32 + 16 * half + i (high)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + k0 + 16 * half), (__m256i)_mm512_cvtneps_pbh(vlo));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + k0 + 32 + 16 * half), (__m256i)_mm512_cvtneps_pbh(vhi));
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(vlkit_kernels, m) {
  m.def("int4_linear(Tensor x, Tensor codes, Tensor scales, Tensor? zeros, int group) -> Tensor");
  m.def("int4_dequantize(Tensor codes, Tensor scales, Tensor? zeros, int group) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor q, Tensor scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(vlkit_kernels, CPU, m) {
  m.impl("int4_linear", int4_linear);
  m.impl("int4_dequantize", int4_dequantize);
  m.impl("int8_linear", int8_linear);
}
