/* One automaton step for a batch of rules, fused per cell (the CPU fast path of automaton.py).
 *
 * Compiled at run time by fused.py with the sizes as constants (G grid, S states, HD hidden width, SP and
 * HDP = S and HD padded to a multiple of the vector width VW, STATE_T the state type) and
 * -ffp-contract=off: every float operation is one IEEE operation in the order written here, the same order as Automaton's torch step, so both give
 * the same bits. Changing an operation or its order here changes the data: change both or neither.
 *
 *   hidden[c] = (((0 + T[0, s0, c]) + T[1, s1, c]) + ...) + T[8, s8, c]      taps in order, h0 folded in T[0]
 *   logit[s]  = ((h[0] * W[0, s] + h[1] * W[1, s]) + ...) + h[HD-1] * W[HD-1, s]   relu(h), products rounded
 *   logit[s] += b3[s] (when b3 is given); logit[state] += identity_bias (when non-zero)
 *
 * Cells whose next state is decided by the logits alone get it here; cells with two or more states within
 * `near` of the maximum (tau > 0) are returned (flat index, logits) for the caller to sample.
 */
#include <stdint.h>
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
#define U 4           /* cells updated together: independent dependency chains for the out-of-order core */

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

/* The next state of one cell from its logits l: decided here, or recorded as ambiguous. */
static inline __attribute__((always_inline)) void decide(const vec *l, int cur, const float *bias, float identity_bias,
                                                         float near, int argmax_only, state_t *out, int64_t flat,
                                                         int64_t *n_amb, int64_t *amb_idx, float *amb_logits)
{
#if defined(__AVX512F__) && VW == 16 && NS == 1
    if (!bias && identity_bias == 0.0f) { /* the common case in a few vector instructions, same results */
        const __mmask16 valid = (__mmask16)((1u << S) - 1);
        const __m512 lv = (__m512)l[0];
        const float top = _mm512_mask_reduce_max_ps(valid, lv);
        if (argmax_only) {
            *out = (state_t)__builtin_ctz(_mm512_mask_cmp_ps_mask(valid, lv, _mm512_set1_ps(top), _CMP_GE_OQ));
            return;
        }
        const __mmask16 k = _mm512_mask_cmp_ps_mask(valid, _mm512_sub_ps(lv, _mm512_set1_ps(top)),
                                                    _mm512_set1_ps(near), _CMP_GE_OQ);
        *out = (state_t)__builtin_ctz(k);
        if (__builtin_popcount(k) > 1) {
            amb_idx[*n_amb] = flat;
            _mm512_mask_storeu_ps(amb_logits + *n_amb * S, valid, lv);
            (*n_amb)++;
        }
        return;
    }
#endif
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
static inline __attribute__((always_inline)) void cells(const int u, int c0, const state_t *st, const vec *tb,
                                                        const vec *w, const int16_t (*nb)[9], const float *bias,
                                                        float identity_bias, float near, int argmax_only,
                                                        state_t *out, int64_t flat0, int64_t *n_amb,
                                                        int64_t *amb_idx, float *amb_logits)
{
    vec h[U][NH];
    for (int i = 0; i < u; i++)
        for (int j = 0; j < NH; j++)
            h[i][j] = (vec){0};
    for (int tap = 0; tap < 9; tap++) /* tap = (dy+1)*3 + (dx+1), as Automaton.neighbours */
        for (int i = 0; i < u; i++) {
            const vec *row = tb + (tap * S + st[nb[c0 + i][tap]]) * NH;
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

/* One step of `batch` automata (rule b: table b, w3t b, b3 b). Returns the number n of ambiguous cells, whose
 * flat indices, logits and uniforms (rng.uniform(step, cell * S + s, start=noise_keys[b])) it wrote to
 * amb_idx, amb_logits and amb_u; the caller draws their states from those. */
int64_t nca_step(const state_t *restrict state, int64_t batch, const float *restrict table,
                 const float *restrict w3t, const float *restrict b3, float identity_bias, float near,
                 int argmax_only, const int64_t *restrict noise_keys, int64_t step, state_t *restrict next,
                 int64_t *restrict amb_idx, float *restrict amb_logits, float *restrict amb_u)
{
    int16_t nb[HW][9]; /* flat neighbour of each cell for each tap, wrapped */
    for (int r = 0; r < G; r++)
        for (int c = 0; c < G; c++)
            for (int tap = 0; tap < 9; tap++)
                nb[r * G + c][tap] = (int16_t)(((r + tap / 3 + G - 1) % G) * G + (c + tap % 3 + G - 1) % G);
    int64_t n_amb = 0;
    for (int64_t b = 0; b < batch; b++) {
        const state_t *st = state + b * HW;
        const vec *tb = (const vec *)(table + b * (9 * S * HDP));
        const vec *w = (const vec *)(w3t + b * (HD * SP));
        const float *bias = b3 ? b3 + b * S : 0;
        int c0 = 0;
        for (; c0 + U <= HW; c0 += U)
            cells(U, c0, st, tb, w, nb, bias, identity_bias, near, argmax_only, next + b * HW, b * HW, &n_amb,
                  amb_idx, amb_logits);
        for (; c0 < HW; c0++)
            cells(1, c0, st, tb, w, nb, bias, identity_bias, near, argmax_only, next + b * HW, b * HW, &n_amb,
                  amb_idx, amb_logits);
    }
    for (int64_t i = 0; i < n_amb; i++)
        noise((uint32_t)noise_keys[amb_idx[i] / HW], (uint64_t)step, amb_idx[i] % HW, amb_u + i * S);
    return n_amb;
}
