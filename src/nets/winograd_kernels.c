/* Tile and weight transforms of the Winograd convolutions F(4x4, 3x3) and F(3x3, 4x4) (Lavin &
 * Gray 2016, points 0, +-1, +-2, inf), and their adjoints for the backward pass. The products
 * between transformed tiles and transformed weights are batched matrix products done by torch
 * (MKL); only the transforms, which are memory-bound passes that torch would run as a dozen
 * separate ops, live here.
 *
 * Both algorithms use 6x6 tiles and the same data transform B^T; F(3x3, 4x4) = G^T[(A g).(B^T d)]
 * is F(4x4, 3x3) = A^T[(G g).(B^T d)] with the filter and output transforms' roles swapped
 * (transposition principle), so four 1-D transform loops serve both.
 *
 * Layouts (all float32, C-contiguous), m = outputs per tile side (4 or 3), r = kernel side:
 *   image  x  [N, C, Hs, Ws]                       the layer's input, before its padding
 *   plane      [m*th + r - 1, m*tw + r - 1]         what the tiles read: x with ph rows and pw
 *                                                  columns of padding on each side (reflected or
 *                                                  zeros), then zeros out to the tiles' extent
 *   tiles  V  [36, C, N*th*tw]                     36 transformed values per 6x6 input tile
 *   output Y  [N, K, m*th, m*tw]                   m x m outputs per tile
 *   weights U [36, K, C]
 * Tile p = n*th*tw + ty*tw + tx covers input rows m*ty..m*ty+5 and columns m*tx..m*tx+5.
 *
 * Every loop body works on one tile row at a time with the tile column tx innermost and all
 * loads and stores contiguous in tx, so the compiler vectorises it; an image row is split into
 * its m column phases (x % m) first to make the overlapping 6-wide windows contiguous.
 * Work is split over images x channels with OpenMP (the same runtime torch loaded).
 * `ivdep`: the inputs and outputs of each loop never overlap; without it GCC assumes they might
 * and leaves the loops with six output streams scalar (3-4x slower).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* B^T d: input-tile transform of six values (rows of B^T: 4 0 -5 0 1 0 / 0 -4 -4 1 1 0 /
 * 0 4 -4 -1 1 0 / 0 -2 -1 2 1 0 / 0 2 -1 -2 1 0 / 0 4 0 -5 0 1). */
#define BT(d0, d1, d2, d3, d4, d5, o0, o1, o2, o3, o4, o5) do { \
        o0 = 4.f * (d0) - 5.f * (d2) + (d4);                      \
        o1 = ((d3) + (d4)) - 4.f * ((d1) + (d2));                 \
        o2 = ((d4) - (d3)) + 4.f * ((d1) - (d2));                 \
        o3 = ((d4) - (d2)) + 2.f * ((d3) - (d1));                 \
        o4 = ((d4) - (d2)) - 2.f * ((d3) - (d1));                 \
        o5 = 4.f * (d1) - 5.f * (d3) + (d5);                      \
    } while (0)

/* B v: adjoint of BT (the columns of B^T). */
#define B_ADJ(v0, v1, v2, v3, v4, v5, o0, o1, o2, o3, o4, o5) do {                 \
        o0 = 4.f * (v0);                                                             \
        o1 = 4.f * ((v2) - (v1) + (v5)) + 2.f * ((v4) - (v3));                       \
        o2 = -5.f * (v0) - 4.f * ((v1) + (v2)) - ((v3) + (v4));                      \
        o3 = ((v1) - (v2)) + 2.f * ((v3) - (v4)) - 5.f * (v5);                       \
        o4 = (v0) + (v1) + (v2) + (v3) + (v4);                                       \
        o5 = (v5);                                                                   \
    } while (0)

/* A^T m: output transform of six values into four (rows of A^T: 1 1 1 1 1 0 / 0 1 -1 2 -2 0 /
 * 0 1 1 4 4 0 / 0 1 -1 8 -8 1). */
#define AT(m0, m1, m2, m3, m4, m5, o0, o1, o2, o3) do {      \
        float s12_ = (m1) + (m2), d12_ = (m1) - (m2);          \
        float s34_ = (m3) + (m4), d34_ = (m3) - (m4);          \
        o0 = (m0) + s12_ + s34_;                               \
        o1 = d12_ + 2.f * d34_;                                \
        o2 = s12_ + 4.f * s34_;                                \
        o3 = d12_ + 8.f * d34_ + (m5);                         \
    } while (0)

/* A y: adjoint of AT (the columns of A^T). */
#define A_ADJ(y0, y1, y2, y3, o0, o1, o2, o3, o4, o5) do {   \
        float s02_ = (y0) + 4.f * (y2), d13_ = 2.f * (y1) + 8.f * (y3); \
        o0 = (y0);                                             \
        o1 = (y0) + (y1) + (y2) + (y3);                        \
        o2 = (y0) - (y1) + (y2) - (y3);                        \
        o3 = s02_ + d13_;                                      \
        o4 = s02_ - d13_;                                      \
        o5 = (y3);                                             \
    } while (0)

/* G g: weight transform of three values into six (rows of G: 1/4 0 0 / -1/6 -1/6 -1/6 /
 * -1/6 1/6 -1/6 / 1/24 1/12 1/6 / 1/24 -1/12 1/6 / 0 0 1). */
#define G3(g0, g1, g2, o0, o1, o2, o3, o4, o5) do {             \
        float e_ = (g0) * (1.f / 24) + (g2) * (1.f / 6);           \
        o0 = (g0) * 0.25f;                                         \
        o1 = ((g0) + (g1) + (g2)) * (-1.f / 6);                    \
        o2 = ((g0) - (g1) + (g2)) * (-1.f / 6);                    \
        o3 = e_ + (g1) * (1.f / 12);                               \
        o4 = e_ - (g1) * (1.f / 12);                               \
        o5 = (g2);                                                 \
    } while (0)

/* G^T v: adjoint of G3 (the columns of G). */
#define G3_ADJ(v0, v1, v2, v3, v4, v5, o0, o1, o2) do {                                  \
        float s12_ = ((v1) + (v2)) * (1.f / 6), d12_ = ((v2) - (v1)) * (1.f / 6);          \
        float s34_ = ((v3) + (v4)), d34_ = ((v3) - (v4));                                  \
        o0 = (v0) * 0.25f - s12_ + s34_ * (1.f / 24);                                      \
        o1 = d12_ + d34_ * (1.f / 12);                                                     \
        o2 = s34_ * (1.f / 6) - s12_ + (v5);                                               \
    } while (0)

/* The 1-D transforms as loops over n contiguous values (so each vectorises), on arrays of
 * pointers. An algorithm's output transform reduces six values to m, its adjoint expands m to six;
 * the filter transform expands r to six, its adjoint reduces six to r. */
typedef void (*reduce_rows)(const float *const in[6], float *const out[], int64_t n);
typedef void (*expand_rows)(const float *const in[], float *const out[6], int64_t n);

static void at_rows(const float *const in[6], float *const out[], int64_t n) {   /* A^T: 6 -> 4 */
    const float *m0 = in[0], *m1 = in[1], *m2 = in[2], *m3 = in[3], *m4 = in[4], *m5 = in[5];
    float *o0 = out[0], *o1 = out[1], *o2 = out[2], *o3 = out[3];
#pragma GCC ivdep
    for (int64_t j = 0; j < n; j++) AT(m0[j], m1[j], m2[j], m3[j], m4[j], m5[j], o0[j], o1[j], o2[j], o3[j]);
}

static void gt_rows(const float *const in[6], float *const out[], int64_t n) {   /* G^T: 6 -> 3 */
    const float *v0 = in[0], *v1 = in[1], *v2 = in[2], *v3 = in[3], *v4 = in[4], *v5 = in[5];
    float *o0 = out[0], *o1 = out[1], *o2 = out[2];
#pragma GCC ivdep
    for (int64_t j = 0; j < n; j++) G3_ADJ(v0[j], v1[j], v2[j], v3[j], v4[j], v5[j], o0[j], o1[j], o2[j]);
}

static void a_rows(const float *const in[], float *const out[6], int64_t n) {    /* A: 4 -> 6 */
    const float *y0 = in[0], *y1 = in[1], *y2 = in[2], *y3 = in[3];
    float *o0 = out[0], *o1 = out[1], *o2 = out[2], *o3 = out[3], *o4 = out[4], *o5 = out[5];
#pragma GCC ivdep
    for (int64_t j = 0; j < n; j++) A_ADJ(y0[j], y1[j], y2[j], y3[j], o0[j], o1[j], o2[j], o3[j], o4[j], o5[j]);
}

static void g_rows(const float *const in[], float *const out[6], int64_t n) {    /* G: 3 -> 6 */
    const float *g0 = in[0], *g1 = in[1], *g2 = in[2];
    float *o0 = out[0], *o1 = out[1], *o2 = out[2], *o3 = out[3], *o4 = out[4], *o5 = out[5];
#pragma GCC ivdep
    for (int64_t j = 0; j < n; j++) G3(g0[j], g1[j], g2[j], o0[j], o1[j], o2[j], o3[j], o4[j], o5[j]);
}

/* Split one row into its `step` column phases: ph[r*q1 + j] = row[step*j + r]. */
static void split_phases(const float *row, int64_t width, int64_t step, float *ph, int64_t q1) {
    for (int64_t r = 0; r < step; r++) {
        const int64_t count = (width - r + step - 1) / step;
        float *out = ph + r * q1;
#pragma GCC ivdep
        for (int64_t j = 0; j < count; j++) out[j] = row[step * j + r];
    }
}

/* Padding folded into the transforms: the layers' reflection or zero padding (and the zeros out
 * to the tiles' extent) is built per image plane in a small per-thread buffer, instead of as a
 * padded copy of the whole input in memory (a separate op, its own backward, and a copy the
 * backward keeps). Reflection as torch's ReflectionPad2d: index -1 reads 1, Hs reads Hs - 2. */
typedef struct {
    int64_t Hs, Ws;      /* the input plane */
    int64_t ph, pw;      /* padding rows (top and bottom) and columns (left and right) */
    int reflect;         /* 1: reflected padding, 0: zeros */
} padding;

static inline int64_t reflected(int64_t i, int64_t n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

/* No padding and no zeros beyond it: the plane is the input itself. */
static int pad_free(const padding *p, int64_t H, int64_t W) {
    return p->ph == 0 && p->pw == 0 && p->Hs == H && p->Ws == W;
}

/* src [Hs, Ws] -> dst [H, W] padded as described by p. */
static void pad_plane(const float *src, const padding *p, float *dst, int64_t H, int64_t W) {
    const int64_t Hs = p->Hs, Ws = p->Ws, ph = p->ph, pw = p->pw;
    for (int64_t y = 0; y < H; y++) {
        float *d = dst + y * W;
        const int64_t sy = y - ph;
        if (y >= Hs + 2 * ph || (!p->reflect && (sy < 0 || sy >= Hs))) {
            memset(d, 0, sizeof(float) * W);
            continue;
        }
        const float *s = src + reflected(sy, Hs) * Ws;
        for (int64_t x = 0; x < pw; x++) {
            d[x] = p->reflect ? s[pw - x] : 0.f;
            d[pw + Ws + x] = p->reflect ? s[Ws - 2 - x] : 0.f;
        }
        memcpy(d + pw, s, sizeof(float) * Ws);
        memset(d + Ws + 2 * pw, 0, sizeof(float) * (W - Ws - 2 * pw));
    }
}

/* Adjoint of pad_plane: src [H, W] (a gradient of the plane) -> dst [Hs, Ws], each padding value
 * added to the input value it copied. */
static void fold_plane(const float *src, int64_t W, const padding *p, float *dst) {
    const int64_t Hs = p->Hs, Ws = p->Ws, ph = p->ph, pw = p->pw;
    for (int64_t sy = 0; sy < Hs; sy++) memcpy(dst + sy * Ws, src + (sy + ph) * W + pw, sizeof(float) * Ws);
    if (!p->reflect) return;
    for (int64_t y = 0; y < Hs + 2 * ph; y++) {
        const float *s = src + y * W;
        float *d = dst + reflected(y - ph, Hs) * Ws;
        if (y < ph || y >= Hs + ph)                     /* a padding row: all of it folds back */
            for (int64_t x = 0; x < Ws; x++) d[x] += s[pw + x];
        for (int64_t x = 0; x < pw; x++) {
            d[pw - x] += s[x];
            d[Ws - 2 - x] += s[pw + Ws + x];
        }
    }
}

/* The data transform B^T d B is the same for both algorithms; only the tiles' step differs
 * (4 for F(4x4, 3x3), 3 for F(3x3, 4x4)). x [N, C, Hs, Ws] padded by pad -> V [36, C, P]. */
static void input_transform(const float *x, const padding *pad, float *V, int64_t N, int64_t C,
                            int64_t th, int64_t tw, int64_t step, int threads) {
    const int64_t W = step * tw + 6 - step, H = step * th + 6 - step, T = th * tw, P = N * T;
    const int64_t q1 = tw + 2;                        /* entries per column phase, rounded up */
    const int direct = pad_free(pad, H, W);
#pragma omp parallel num_threads(threads)
    {
        float *t = malloc(sizeof(float) * 6 * W);            /* B^T applied down the 6 rows */
        float *ph = malloc(sizeof(float) * 6 * step * q1);   /* ... split into column phases */
        float *padded = direct ? NULL : malloc(sizeof(float) * H * W);
#pragma omp for schedule(static)
        for (int64_t nc = 0; nc < N * C; nc++) {
            const int64_t n = nc / C, c = nc % C;
            const float *plane = x + nc * pad->Hs * pad->Ws;
            if (!direct) {
                pad_plane(plane, pad, padded, H, W);
                plane = padded;
            }
            for (int64_t ty = 0; ty < th; ty++) {
                const float *r = plane + step * ty * W;
#pragma GCC ivdep
                for (int64_t i = 0; i < W; i++)
                    BT(r[i], r[W + i], r[2 * W + i], r[3 * W + i], r[4 * W + i], r[5 * W + i],
                       t[i], t[W + i], t[2 * W + i], t[3 * W + i], t[4 * W + i], t[5 * W + i]);
                for (int64_t i = 0; i < 6; i++) split_phases(t + i * W, W, step, ph + i * step * q1, q1);
                const int64_t p0 = n * T + ty * tw;
                for (int64_t i = 0; i < 6; i++) {
                    /* window column l of tile tx is phase l % step at index tx + l / step */
                    const float *a[6];
                    for (int64_t l = 0; l < 6; l++) a[l] = ph + (i * step + l % step) * q1 + l / step;
                    const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
                    float *o[6];
                    for (int k = 0; k < 6; k++) o[k] = V + ((i * 6 + k) * C + c) * P + p0;
                    float *o0 = o[0], *o1 = o[1], *o2 = o[2], *o3 = o[3], *o4 = o[4], *o5 = o[5];
#pragma GCC ivdep
                    for (int64_t j = 0; j < tw; j++)
                        BT(a0[j], a1[j], a2[j], a3[j], a4[j], a5[j], o0[j], o1[j], o2[j], o3[j], o4[j], o5[j]);
                }
            }
        }
        free(t);
        free(ph);
        free(padded);
    }
}

/* Adjoint of input_transform: dV [36, C, P] -> dx [N, C, Hs, Ws], overlapping tiles adding up. */
static void input_transform_adjoint(const float *dV, const padding *pad, float *dx, int64_t N,
                                    int64_t C, int64_t th, int64_t tw, int64_t step, int threads) {
    const int64_t W = step * tw + 6 - step, H = step * th + 6 - step, T = th * tw, P = N * T;
    const int64_t q1 = tw + 2;
    const int direct = pad_free(pad, H, W);
#pragma omp parallel num_threads(threads)
    {
        float *u = malloc(sizeof(float) * 36 * tw);      /* B along each tile's columns */
        float *padded = direct ? NULL : malloc(sizeof(float) * H * W);   /* the plane's gradient */
        /* The plane's sums by column phase (acc[(y*step + x%step)*q1 + x/step]): overlapping
         * tiles add into contiguous rows; the columns are interleaved once at the end. */
        float *acc = malloc(sizeof(float) * H * step * q1);
#pragma omp for schedule(static)
        for (int64_t nc = 0; nc < N * C; nc++) {
            const int64_t n = nc / C, c = nc % C;
            memset(acc, 0, sizeof(float) * H * step * q1);
            for (int64_t ty = 0; ty < th; ty++) {
                const int64_t p0 = n * T + ty * tw;
                for (int64_t i = 0; i < 6; i++) {
                    const float *v[6];
                    for (int k = 0; k < 6; k++) v[k] = dV + ((i * 6 + k) * C + c) * P + p0;
                    const float *v0 = v[0], *v1 = v[1], *v2 = v[2], *v3 = v[3], *v4 = v[4], *v5 = v[5];
                    float *u0 = u + i * 6 * tw, *u1 = u0 + tw, *u2 = u1 + tw, *u3 = u2 + tw,
                          *u4 = u3 + tw, *u5 = u4 + tw;
#pragma GCC ivdep
                    for (int64_t j = 0; j < tw; j++)
                        B_ADJ(v0[j], v1[j], v2[j], v3[j], v4[j], v5[j], u0[j], u1[j], u2[j], u3[j], u4[j], u5[j]);
                }
                /* u[i][l][tx]: tile row i, tile column l. Now B down the rows, one column at a time. */
                for (int64_t l = 0; l < 6; l++) {
                    const float *c0 = u + l * tw, *c1 = c0 + 6 * tw, *c2 = c1 + 6 * tw,
                                *c3 = c2 + 6 * tw, *c4 = c3 + 6 * tw, *c5 = c4 + 6 * tw;
                    float *a[6];
                    for (int64_t r = 0; r < 6; r++)
                        a[r] = acc + ((step * ty + r) * step + l % step) * q1 + l / step;
                    float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
#pragma GCC ivdep
                    for (int64_t j = 0; j < tw; j++) {
                        float r0, r1, r2, r3, r4, r5;
                        B_ADJ(c0[j], c1[j], c2[j], c3[j], c4[j], c5[j], r0, r1, r2, r3, r4, r5);
                        a0[j] += r0; a1[j] += r1; a2[j] += r2; a3[j] += r3; a4[j] += r4; a5[j] += r5;
                    }
                }
            }
            float *plane = direct ? dx + nc * H * W : padded;
            for (int64_t y = 0; y < H; y++)
                for (int64_t r = 0; r < step; r++) {
                    const int64_t count = (W - r + step - 1) / step;
                    const float *src = acc + (y * step + r) * q1;
                    float *row = plane + y * W + r;
#pragma GCC ivdep
                    for (int64_t j = 0; j < count; j++) row[step * j] = src[j];
                }
            if (!direct) fold_plane(padded, W, pad, dx + nc * pad->Hs * pad->Ws);
        }
        free(u);
        free(acc);
        free(padded);
    }
}

/* Products M [36, K, P] -> output Y [N, K, m*th, m*tw] (+ bias), m outputs per tile side. */
static void output_transform(const float *M, const float *bias, float *Y, int64_t N, int64_t K,
                             int64_t th, int64_t tw, int64_t m, reduce_rows reduce, int threads) {
    const int64_t T = th * tw, P = N * T, W = m * tw;
#pragma omp parallel num_threads(threads)
    {
        float *s = malloc(sizeof(float) * 6 * m * tw);   /* reduced along each tile row's columns */
        float *v = malloc(sizeof(float) * m * tw);       /* one output row, by column phase */
        const float *in[6];
        float *out[6];
#pragma omp for schedule(static)
        for (int64_t nk = 0; nk < N * K; nk++) {
            const int64_t n = nk / K, k = nk % K;
            const float b = bias ? bias[k] : 0.f;
            for (int64_t ty = 0; ty < th; ty++) {
                const int64_t p0 = n * T + ty * tw;
                for (int64_t i = 0; i < 6; i++) {
                    for (int64_t j = 0; j < 6; j++) in[j] = M + ((i * 6 + j) * K + k) * P + p0;
                    for (int64_t o = 0; o < m; o++) out[o] = s + (i * m + o) * tw;
                    reduce(in, out, tw);
                }
                float *rows = Y + (nk * m * th + m * ty) * W;
                for (int64_t o = 0; o < m; o++) {
                    for (int64_t i = 0; i < 6; i++) in[i] = s + (i * m + o) * tw;
                    for (int64_t r = 0; r < m; r++) out[r] = v + r * tw;
                    reduce(in, out, tw);
                    /* v[r] holds output row m*ty + r at columns m*j + o */
                    for (int64_t r = 0; r < m; r++) {
                        float *row = rows + r * W + o;
                        const float *vr = v + r * tw;
                        for (int64_t j = 0; j < tw; j++) row[m * j] = vr[j] + b;
                    }
                }
            }
        }
        free(s);
        free(v);
    }
}

/* Adjoint of output_transform: dY [N, K, m*th, m*tw] -> dM [36, K, P]. */
static void output_transform_adjoint(const float *dY, float *dM, int64_t N, int64_t K, int64_t th,
                                     int64_t tw, int64_t m, expand_rows expand, int threads) {
    const int64_t T = th * tw, P = N * T, W = m * tw;
#pragma omp parallel num_threads(threads)
    {
        float *ph = malloc(sizeof(float) * m * m * tw);  /* m rows x m column phases */
        float *s = malloc(sizeof(float) * 6 * m * tw);   /* expanded along the rows, per phase */
        const float *in[6];
        float *out[6];
#pragma omp for schedule(static)
        for (int64_t nk = 0; nk < N * K; nk++) {
            const int64_t n = nk / K, k = nk % K;
            for (int64_t ty = 0; ty < th; ty++) {
                const float *rows = dY + (nk * m * th + m * ty) * W;
                for (int64_t r = 0; r < m; r++) split_phases(rows + r * W, W, m, ph + r * m * tw, tw);
                for (int64_t o = 0; o < m; o++) {
                    for (int64_t r = 0; r < m; r++) in[r] = ph + (r * m + o) * tw;
                    for (int64_t l = 0; l < 6; l++) out[l] = s + (l * m + o) * tw;
                    expand(in, out, tw);
                }
                const int64_t p0 = n * T + ty * tw;
                for (int64_t i = 0; i < 6; i++) {
                    for (int64_t o = 0; o < m; o++) in[o] = s + (i * m + o) * tw;
                    for (int64_t l = 0; l < 6; l++) out[l] = dM + ((i * 6 + l) * K + k) * P + p0;
                    expand(in, out, tw);
                }
            }
        }
        free(ph);
        free(s);
    }
}

/* w [K, C, r, r] -> U [36, K, C], U[6a + b][k][c] = (F w[k][c] F^T)[a][b] with F the filter
 * transform (`expand`). Per output channel k, the r*r taps are first gathered into rows over c
 * so every step below is a contiguous loop over c. */
static void weight_transform(const float *w, float *U, int64_t K, int64_t C, int64_t r,
                             expand_rows expand, int threads) {
#pragma omp parallel num_threads(threads)
    {
        float *g = malloc(sizeof(float) * r * r * C);  /* tap j of every input channel: g[j*C + c] */
        float *t = malloc(sizeof(float) * 6 * r * C);  /* expanded down the columns: t[(r*a + j)*C + c] */
        const float *in[6];
        float *out[6];
#pragma omp for schedule(static)
        for (int64_t k = 0; k < K; k++) {
            const float *wk = w + k * C * r * r;
            for (int64_t c = 0; c < C; c++)
                for (int64_t j = 0; j < r * r; j++) g[j * C + c] = wk[c * r * r + j];
            for (int64_t j = 0; j < r; j++) {
                for (int64_t a = 0; a < r; a++) in[a] = g + (a * r + j) * C;
                for (int64_t a = 0; a < 6; a++) out[a] = t + (a * r + j) * C;
                expand(in, out, C);
            }
            for (int64_t a = 0; a < 6; a++) {
                for (int64_t j = 0; j < r; j++) in[j] = t + (a * r + j) * C;
                for (int64_t b = 0; b < 6; b++) out[b] = U + ((6 * a + b) * K + k) * C;
                expand(in, out, C);
            }
        }
        free(g);
        free(t);
    }
}

/* dU [36, K, C] -> dw [K, C, r, r]: adjoint of weight_transform (`reduce` = F^T). */
static void weight_transform_adjoint(const float *dU, float *dw, int64_t K, int64_t C, int64_t r,
                                     reduce_rows reduce, int threads) {
#pragma omp parallel num_threads(threads)
    {
        float *t = malloc(sizeof(float) * 6 * r * C);  /* reduced along the rows: t[(r*a + j)*C + c] */
        float *g = malloc(sizeof(float) * r * r * C);  /* the taps, by rows over c */
        const float *in[6];
        float *out[6];
#pragma omp for schedule(static)
        for (int64_t k = 0; k < K; k++) {
            for (int64_t a = 0; a < 6; a++) {
                for (int64_t b = 0; b < 6; b++) in[b] = dU + ((6 * a + b) * K + k) * C;
                for (int64_t j = 0; j < r; j++) out[j] = t + (a * r + j) * C;
                reduce(in, out, C);
            }
            for (int64_t j = 0; j < r; j++) {
                for (int64_t a = 0; a < 6; a++) in[a] = t + (a * r + j) * C;
                for (int64_t a = 0; a < r; a++) out[a] = g + (a * r + j) * C;
                reduce(in, out, C);
            }
            float *dwk = dw + k * C * r * r;
            for (int64_t c = 0; c < C; c++)
                for (int64_t j = 0; j < r * r; j++) dwk[c * r * r + j] = g[j * C + c];
        }
        free(t);
        free(g);
    }
}

/* ----- the entry points, six per algorithm: F(4x4, 3x3) (winograd_*) and F(3x3, 4x4)
 * (winograd_k4_*). m = outputs per tile side, r = kernel side; `out` reduces six values to m
 * (its adjoint `out_adj` expands m to six), `filt` expands r to six (`filt_adj` reduces). ---- */
#define ENTRY_POINTS(prefix, m, r, out, out_adj, filt, filt_adj)                                       \
    void prefix##input_transform(const float *x, float *V, int64_t N, int64_t C, int64_t th,            \
                                 int64_t tw, int64_t Hs, int64_t Ws, int64_t ph, int64_t pw,           \
                                 int reflect, int threads) {                                           \
        const padding pad = {Hs, Ws, ph, pw, reflect};                                                 \
        input_transform(x, &pad, V, N, C, th, tw, m, threads);                                         \
    }                                                                                                  \
    void prefix##input_transform_adjoint(const float *dV, float *dx, int64_t N, int64_t C, int64_t th,  \
                                         int64_t tw, int64_t Hs, int64_t Ws, int64_t ph, int64_t pw,   \
                                         int reflect, int threads) {                                   \
        const padding pad = {Hs, Ws, ph, pw, reflect};                                                 \
        input_transform_adjoint(dV, &pad, dx, N, C, th, tw, m, threads);                               \
    }                                                                                                  \
    void prefix##output_transform(const float *M, const float *bias, float *Y, int64_t N, int64_t K,    \
                                  int64_t th, int64_t tw, int threads) {                               \
        output_transform(M, bias, Y, N, K, th, tw, m, out, threads);                                   \
    }                                                                                                  \
    void prefix##output_transform_adjoint(const float *dY, float *dM, int64_t N, int64_t K, int64_t th, \
                                          int64_t tw, int threads) {                                   \
        output_transform_adjoint(dY, dM, N, K, th, tw, m, out_adj, threads);                           \
    }                                                                                                  \
    void prefix##weight_transform(const float *w, float *U, int64_t K, int64_t C, int threads) {       \
        weight_transform(w, U, K, C, r, filt, threads);                                                \
    }                                                                                                  \
    void prefix##weight_transform_adjoint(const float *dU, float *dw, int64_t K, int64_t C, int threads) { \
        weight_transform_adjoint(dU, dw, K, C, r, filt_adj, threads);                                  \
    }

ENTRY_POINTS(winograd_, 4, 3, at_rows, a_rows, g_rows, gt_rows)
/* F(3x3, 4x4): the roles swapped (transposition principle): output by G^T, filter by A. */
ENTRY_POINTS(winograd_k4_, 3, 4, gt_rows, g_rows, a_rows, at_rows)
