/* One automaton step for a batch of rules, fused per cell (the CPU fast path of automaton.py).
 *
 * Compiled at run time by native.py with the sizes as constants (G grid, S states, HD hidden width, SP and
 * HDP = S and HD padded to a multiple of the vector width VW, STATE_T the state type) and
 * -ffp-contract=off: every float operation is one IEEE operation in the order written here, the same order
 * as Automaton's torch step, so both give the same bits. Changing an operation or its order here changes
 * the data: change both or neither.
 *
 *   hidden[c] = (((0 + T[0, s0, c]) + T[1, s1, c]) + ...) + T[8, s8, c]      taps in order, h0 folded in T[0]
 *   logit[s]  = ((h[0] * W[0, s] + h[1] * W[1, s]) + ...) + h[HD-1] * W[HD-1, s]   relu(h), products rounded
 *   logit[s] += b3[s] (when b3 is given); logit[state] += identity_bias (when non-zero)
 *
 * Cells whose next state is decided by the logits alone get it here; cells with two or more states within
 * `near` of the maximum (tau > 0) are returned (flat index, logits, uniforms) for the caller to sample.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef STATE_T state_t;
typedef float vec __attribute__((vector_size(4 * VW))); /* VW floats; GCC splits it where registers are narrower */
typedef int32_t mask __attribute__((vector_size(4 * VW)));
#define HW (G * G)
#define NH (HDP / VW) /* vectors per hidden row (HDP = HD padded with zero columns) */
#define NS (SP / VW)  /* vectors per logit row */
#define GP (G + 2)                                /* side of the wrap-padded grid (see nca_step) */
#define TAP(tap) (((tap) / 3 - 1) * GP + (tap) % 3 - 1) /* tap = (dy+1)*3 + (dx+1), as Automaton.neighbours */
#define U 16 /* cells updated together: independent dependency chains for the out-of-order core */
#if defined(__AVX512F__) && VW == 16 && !defined(NCA_PORTABLE)
#define TRANSPOSED 1 /* cells16 below; NCA_PORTABLE forces the portable `cells` (tests compare them) */
#endif

/* rng.py's hash, for the uniforms of ambiguous cells: integer arithmetic, the same on every machine */
#define GOLDEN 0x9E3779B9u
static inline uint32_t mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

/* rng.uniform(step, cell * S + s, start=noise_key) for s < S: the noise of an ambiguous cell */
static void noise(uint32_t key, uint64_t step, int64_t cell, float *u)
{
    uint32_t h = mix32(key ^ (uint32_t)(step + GOLDEN));
    h = mix32(h ^ (uint32_t)((step >> 32) + GOLDEN));
    for (int s = 0; s < S; s++) {
        uint32_t x = mix32(h ^ (uint32_t)((uint64_t)(cell * S + s) + GOLDEN));
        u[s] = ((float)(x >> 9) + 0.5f) * (1.0f / 8388608.0f);
    }
}

/* The next state of one cell from its logits l: decided here, or recorded as ambiguous (the portable loop;
 * cells16 decides 16 cells at once where AVX-512 is available). */
static inline __attribute__((always_inline)) void decide(const vec *l, int cur, const float *bias, float identity_bias,
                                                         float near, int argmax_only, state_t *out, int64_t flat,
                                                         int64_t *n_amb, int64_t *amb_idx, float *amb_logits)
{
    float ls[SP];
    memcpy(ls, l, sizeof ls);
    if (bias)
        for (int s = 0; s < S; s++)
            ls[s] = ls[s] + bias[s];
    if (identity_bias != 0.0f)
        ls[cur] = ls[cur] + identity_bias;
    float top = ls[0];
    for (int s = 1; s < S; s++)
        top = ls[s] > top ? ls[s] : top;
    if (argmax_only) { /* tau = 0: the first maximal state, argmax's tie rule */
        int s = 0;
        while (ls[s] < top)
            s++;
        *out = (state_t)s;
        return;
    }
    int count = 0, first = 0;
    for (int s = S - 1; s >= 0; s--)
        if (ls[s] - top >= near) {
            count++;
            first = s;
        }
    *out = (state_t)first;
    if (count > 1) {
        amb_idx[*n_amb] = flat;
        memcpy(amb_logits + *n_amb * S, ls, S * sizeof(float));
        (*n_amb)++;
    }
}

/* Cells c0 .. c0+u-1 of one automaton; u is a constant after inlining, so the cells' chains interleave. */
static inline __attribute__((always_inline)) void cells(const int u, int c0, const state_t *st, const float *tb,
                                                        const vec *w, const int32_t *q, const int32_t *pos,
                                                        const float *bias,
                                                        float identity_bias, float near, int argmax_only,
                                                        state_t *out, int64_t flat0, int64_t *n_amb,
                                                        int64_t *amb_idx, float *amb_logits)
{
    vec h[U][NH];
    for (int i = 0; i < u; i++)
        for (int j = 0; j < NH; j++)
            h[i][j] = (vec){0};
    for (int tap = 0; tap < 9; tap++)
        for (int i = 0; i < u; i++) {
            const vec *row = (const vec *)(tb + tap * S * HDP + q[pos[c0 + i] + TAP(tap)]);
            for (int j = 0; j < NH; j++)
                h[i][j] = h[i][j] + row[j];
        }
    float hs[U][HDP];
    for (int i = 0; i < u; i++)
        for (int j = 0; j < NH; j++) {
            vec v = (vec)((mask)h[i][j] & (h[i][j] > (vec){0})); /* relu */
            memcpy(hs[i] + j * VW, &v, sizeof v);
        }
    vec l[U][NS];
    for (int i = 0; i < u; i++)
        for (int j = 0; j < NS; j++)
            l[i][j] = hs[i][0] * w[j];
    for (int k = 1; k < HD; k++)
        for (int i = 0; i < u; i++)
            for (int j = 0; j < NS; j++)
                l[i][j] = l[i][j] + hs[i][k] * w[k * NS + j];
    for (int i = 0; i < u; i++)
        decide(l[i], st[c0 + i], bias, identity_bias, near, argmax_only, out + c0 + i, flat0 + c0 + i, n_amb,
               amb_idx, amb_logits);
}

#ifdef TRANSPOSED
/* In-register transpose of a 16x16 float block: r[i][c] -> r[c][i]. */
static inline __attribute__((always_inline)) void transpose16(__m512 r[16])
{
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) { /* 32-bit interleave of row pairs */
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* u[i + j], 128-bit lane L: rows i..i+3 of column 4L + j */
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int j = 0; j < 4; j++) { /* gather the four row blocks of columns j, 4 + j, 8 + j, 12 + j */
        const __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88), v1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
        const __m512 w0 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
        const __m512 w1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
        r[j] = _mm512_shuffle_f32x4(v0, w0, 0x88);
        r[4 + j] = _mm512_shuffle_f32x4(v1, w1, 0x88);
        r[8 + j] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
        r[12 + j] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
    }
}

/* Cells c0 .. c0+15 of one automaton (those past c0 + n - 1 are computed on a copy of cell c0 and dropped),
 * one cell per vector lane from the last layer on: the hidden rows are summed per cell as in `cells`, then
 * transposed, so each logit is a vector over 16 cells and the weights are broadcast scalars. Every lane
 * performs the float operations of `cells` in the same order: the same bits, ~2x faster. */
static inline __attribute__((always_inline)) void cells16(int c0, int n, const state_t *st, const float *tb,
                                                          const float *w, const int32_t *q, const int32_t *pos,
                                                          const float *bias,
                                                          float identity_bias, float near, int argmax_only,
                                                          state_t *out, int64_t flat0, int64_t *n_amb,
                                                          int64_t *amb_idx, float *amb_logits)
{
    const __mmask16 valid = (__mmask16)((1u << n) - 1);
    __m512 ht[HDP];
    for (int jb = 0; jb < NH; jb++) {
        __m512 r[16];
        for (int i = 0; i < 16; i++) {
            const int32_t *qc = q + pos[c0 + (i < n ? i : 0)];
            __m512 h = _mm512_setzero_ps();
            for (int tap = 0; tap < 9; tap++)
                h = _mm512_add_ps(h, _mm512_loadu_ps(tb + tap * S * HDP + qc[TAP(tap)] + jb * VW));
            r[i] = _mm512_max_ps(h, _mm512_setzero_ps()); /* relu */
        }
        transpose16(r);
        for (int k = 0; k < 16; k++)
            ht[jb * 16 + k] = r[k];
    }
    __m512 acc[S];
    for (int s = 0; s < S; s++)
        acc[s] = _mm512_mul_ps(ht[0], _mm512_set1_ps(w[s]));
    for (int k = 1; k < HD; k++)
        for (int s = 0; s < S; s++)
            acc[s] = _mm512_add_ps(acc[s], _mm512_mul_ps(ht[k], _mm512_set1_ps(w[k * SP + s])));
    if (bias)
        for (int s = 0; s < S; s++)
            acc[s] = _mm512_add_ps(acc[s], _mm512_set1_ps(bias[s]));
    if (identity_bias != 0.0f) {
        int32_t cur[16];
        for (int i = 0; i < 16; i++)
            cur[i] = st[c0 + (i < n ? i : 0)];
        const __m512i curv = _mm512_loadu_si512(cur);
        for (int s = 0; s < S; s++)
            acc[s] = _mm512_mask_add_ps(acc[s], _mm512_cmpeq_epi32_mask(curv, _mm512_set1_epi32(s)), acc[s],
                                        _mm512_set1_ps(identity_bias));
    }
    __m512 top = acc[0];
    for (int s = 1; s < S; s++)
        top = _mm512_max_ps(acc[s], top);
    __m512i first = _mm512_setzero_si512(), count = _mm512_setzero_si512();
    const __m512i one = _mm512_set1_epi32(1);
    for (int s = S - 1; s >= 0; s--) { /* the lowest qualifying state wins, as argmax's tie rule */
        const __mmask16 m = argmax_only ? _mm512_cmp_ps_mask(acc[s], top, _CMP_GE_OQ)
                                        : _mm512_cmp_ps_mask(_mm512_sub_ps(acc[s], top), _mm512_set1_ps(near), _CMP_GE_OQ);
        first = _mm512_mask_mov_epi32(first, m, _mm512_set1_epi32(s));
        count = _mm512_mask_add_epi32(count, m, count, one);
    }
    if (sizeof(state_t) == 1)
        _mm512_mask_cvtepi32_storeu_epi8(out + c0, valid, first);
    else
        _mm512_mask_storeu_epi32(out + c0, valid, first);
    __mmask16 amb = argmax_only ? 0 : (__mmask16)(_mm512_cmpgt_epi32_mask(count, one) & valid);
    if (amb) {
        float lanes[S][16];
        for (int s = 0; s < S; s++)
            _mm512_storeu_ps(lanes[s], acc[s]);
        for (; amb; amb &= amb - 1) {
            const int i = __builtin_ctz(amb);
            amb_idx[*n_amb] = flat0 + c0 + i;
            for (int s = 0; s < S; s++)
                amb_logits[*n_amb * S + s] = lanes[s][i];
            (*n_amb)++;
        }
    }
}
#endif

/* One step of `batch` automata (rule b: table b, w3t b, b3 b). Returns the number n of ambiguous cells, whose
 * flat indices, logits and uniforms (rng.uniform(step, cell * S + s, start=noise_keys[b])) it wrote to
 * amb_idx, amb_logits and amb_u; the caller draws their states from those. -1: out of memory. */
int64_t nca_step(const state_t *restrict state, int64_t batch, const float *restrict table,
                 const float *restrict w3t, const float *restrict b3, float identity_bias, float near,
                 int argmax_only, const int64_t *restrict noise_keys, int64_t step, state_t *restrict next,
                 int64_t *restrict amb_idx, float *restrict amb_logits, float *restrict amb_u)
{
    /* each cell's place in the padded grid, and the padded grid (below); on the heap: grids may be large */
    int32_t *pos = malloc(sizeof(int32_t) * HW), *q = malloc(sizeof(int32_t) * GP * GP);
    if (!pos || !q) {
        free(pos);
        free(q);
        return -1;
    }
    for (int r = 0; r < G; r++)
        for (int c = 0; c < G; c++)
            pos[r * G + c] = (r + 1) * GP + c + 1;
    int64_t n_amb = 0;
    for (int64_t b = 0; b < batch; b++) {
        const state_t *st = state + b * HW;
        const float *tb = table + b * (9 * S * HDP);
        const vec *w = (const vec *)(w3t + b * (HD * SP));
        const float *bias = b3 ? b3 + b * S : 0;
        /* the grid wrap-padded by one cell, each cell as the offset of its state's row in a tap's table: a
         * neighbour's row is then one load at a constant distance, with no wrap arithmetic per cell */
        for (int r = 0; r < GP; r++)
            for (int c = 0; c < GP; c++)
                q[r * GP + c] = (int32_t)st[((r + G - 1) % G) * G + (c + G - 1) % G] * HDP;
        int c0 = 0;
#ifdef TRANSPOSED
        for (; c0 < HW; c0 += 16)
            cells16(c0, HW - c0 < 16 ? HW - c0 : 16, st, tb, (const float *)w, q, pos, bias, identity_bias, near,
                    argmax_only, next + b * HW, b * HW, &n_amb, amb_idx, amb_logits);
#endif
        for (; c0 + U <= HW; c0 += U)
            cells(U, c0, st, tb, w, q, pos, bias, identity_bias, near, argmax_only, next + b * HW, b * HW, &n_amb,
                  amb_idx, amb_logits);
        for (; c0 < HW; c0++)
            cells(1, c0, st, tb, w, q, pos, bias, identity_bias, near, argmax_only, next + b * HW, b * HW, &n_amb,
                  amb_idx, amb_logits);
    }
    free(pos);
    free(q);
    for (int64_t i = 0; i < n_amb; i++)
        noise((uint32_t)noise_keys[amb_idx[i] / HW], (uint64_t)step, amb_idx[i] % HW, amb_u + i * S);
    return n_amb;
}

/* The sampled cells' next states: argmax over s of logits[i][s] / tau + gumbel[i][s], given y = -gumbel
 * (x + -y is x - y in IEEE arithmetic); the first maximum wins, as torch's argmax. */
void nca_resolve(int64_t n, const int64_t *restrict amb_idx, const float *restrict amb_logits,
                 const float *restrict y, float tau, state_t *restrict next)
{
    for (int64_t i = 0; i < n; i++) {
        const float *l = amb_logits + i * S, *yi = y + i * S;
        float best = l[0] / tau - yi[0];
        int arg = 0;
        for (int s = 1; s < S; s++) {
            const float v = l[s] / tau - yi[s];
            if (v > best) {
                best = v;
                arg = s;
            }
        }
        next[amb_idx[i]] = (state_t)arg;
    }
}
