/* forward.c — THE forward schedule of DeepSeek V4: embed → N × [HC-attention, HC-MoE]
 * → HC-head → norm → LM head (MODEL.md §3, §10), for a chunk of consecutive positions.
 *
 * Owns: the layer order, the per-token decode-state updates of §12.2 (raw ring,
 * compressor windows, indexer rows) and which numerics effects apply where (production
 * vs exact). Must not: touch tensor data except through the backend ops (backend.h),
 * allocate memory (everything lives in the session), or differ between a chunk of n
 * tokens and n single-token calls: batched matmuls compute every row independently and
 * the stateful parts run token by token in position order.
 *
 * Numerics: exact mode follows transformers 5.17 (the oracle); production mode adds the
 * official/ds4 effects of MODEL.md §13–14: FP8 simulation of raw and compressed KV rows,
 * Hadamard+FP4 of indexer queries and keys, F16 rounding of cached rows, routing weight
 * applied before the down projection, ds4's normalisation guard; the backend quantises
 * matmul activations.
 */
#include <math.h>
#include <string.h>

#include "core/common.h"
#include "engine_internal.h"

/* HC site: rmsnorm over the flattened streams, mixing logits, then pre/post/comb, the
 * collapsed sublayer input and its rmsnorm (norm_w) into sc->x. HF normalises with
 * rms_norm_eps here. A backend may do all of it in one fused op (backend.h hc_site). */
static void hc_site(ds4_session *s, const ds4_tensor *fn, const float *scale, const float *base, const float *norm_w,
                    int n) {
    ds4_engine *e = s->e;
    ds4_backend *be = e->be;
    const ds4_hparams *hp = &e->model->hp;
    ds4_scratch *sc = &s->s;
    const int h = (int)hp->n_hc;
    const int64_t d = hp->n_embd, hw = (int64_t)h * d, mw = (int64_t)(2 + h) * h;
    if (be->hc_site) {
        be->hc_site(be, fn, scale, base, sc->H, n, h, d, (int)hp->hc_sinkhorn_iters, hp->hc_eps, hp->rms_eps, norm_w,
                    sc->post, sc->comb, sc->x);
        return;
    }
    be->rmsnorm(be, sc->H, hw, NULL, sc->flat, hw, hw, n, hp->rms_eps);
    be->matmul(be, fn, 0, 0, (uint64_t)mw, sc->flat, hw, sc->mix, mw, n);
    be->hc_pre(be, sc->mix, scale, base, sc->H, n, h, d, (int)hp->hc_sinkhorn_iters, hp->hc_eps, sc->xin, sc->post,
               sc->comb);
    be->rmsnorm(be, sc->xin, d, norm_w, sc->x, d, d, n, hp->rms_eps);
}

/* y_j = W_j · x for the matrices that read the same input (one fused op when the
 * backend has it; the same values as one matmul each). */
static void matmul_set(ds4_backend *be, int cnt, const ds4_tensor *const *W, float *const *y, const int64_t *ys,
                       const float *x, int64_t xs, int n) {
    if (be->matmul_multi && cnt > 1) {
        be->matmul_multi(be, cnt, W, y, ys, x, xs, n);
        return;
    }
    for (int j = 0; j < cnt; j++) be->matmul(be, W[j], 0, 0, W[j]->ne[1], x, xs, y[j], ys[j], n);
}

static void hc_apply(ds4_session *s, int n);

/* The HC site that follows a sublayer whose output sc->y still has to be applied to the
 * streams (hc_post, §6) when post_first: one fused op when the backend has it. */
static void hc_next_site(ds4_session *s, bool post_first, const ds4_tensor *fn, const float *scale,
                         const float *base, const float *norm_w, int n) {
    ds4_engine *e = s->e;
    ds4_backend *be = e->be;
    const ds4_hparams *hp = &e->model->hp;
    ds4_scratch *sc = &s->s;
    if (post_first && be->hc_post_site) {
        be->hc_post_site(be, sc->y, sc->H, sc->H2, fn, scale, base, n, (int)hp->n_hc, hp->n_embd,
                         (int)hp->hc_sinkhorn_iters, hp->hc_eps, hp->rms_eps, norm_w, sc->post, sc->comb, sc->x);
        float *t = sc->H;
        sc->H = sc->H2;
        sc->H2 = t;
        return;
    }
    if (post_first) hc_apply(s, n);
    hc_site(s, fn, scale, base, norm_w, n);
}

static void hc_apply(ds4_session *s, int n) {
    ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model->hp;
    ds4_scratch *sc = &s->s;
    e->be->hc_post(e->be, sc->y, sc->H, sc->post, sc->comb, n, (int)hp->n_hc, hp->n_embd, sc->H2);
    float *t = sc->H;
    sc->H = sc->H2;
    sc->H2 = t;
}

/* One compressor step for position p (§7.5 / §12.2): store C and Z + ape in the ring
 * (unless the fused qkv_rope op already did: stored), and when p closes window w, pool it
 * into rows[w], normalise, rotate at w·R, and (prod) apply the storage simulation. */
static void compressor_step(ds4_session *s, const float *proj, float *ring, int cap, const float *ape,
                            int R, int coff, int64_t hd, const float *norm, float *rows, int64_t p, bool indexer,
                            bool stored) {
    ds4_engine *e = s->e;
    ds4_backend *be = e->be;
    const ds4_hparams *hp = &e->model->hp;
    const int64_t cw = coff * hd, rw = 2 * cw;
    if (!stored) {
        float *row = ring + (p % cap) * rw;
        be->copy(be, row, proj, (size_t)rw * sizeof(float));
        be->axpy(be, row + cw, ape + (p % R) * cw, 1.0f, cw);
    }
    if ((p + 1) % R) return;
    const int64_t w = p / R;
    const float *cur = ring + ((w * R) % cap) * rw;
    const float *prev = coff == 2 && w > 0 ? ring + (((w - 1) * R) % cap) * rw : NULL;
    if (be->compress_rows) { /* the sequence below in one op, bit-identical */
        be->compress_rows(be, ring, cap, R, coff, hd, norm, hp->rms_eps, (int)hp->n_rot, e->inv_freq_comp, !e->exact,
                          indexer, w, w + 1, rows);
        return;
    }
    /* f32 rows only: compact rows (backend.h kv_row_bytes) have compress_rows (session.c) */
    DS4_ASSERT(!s->kv_compact);
    float *out = rows + w * hd;
    be->compress_pool(be, cur, prev, rw, R, coff, hd, out);
    be->rmsnorm(be, out, hd, norm, out, hd, hd, 1, hp->rms_eps);
    be->rope(be, out, hd, 1, hd, (int)hp->n_rot, w * R, e->inv_freq_comp, false);
    if (!e->exact) {
        if (indexer) be->hadamard_fp4_sim(be, out, hd, 1, hd);
        else be->fp8_sim(be, out, hd, 1, hd - hp->n_rot);
        be->round_f16(be, out, hd);
    }
}

static double softplus(double x) { return x > 20 ? x : log1p(exp(x)); }

/* Router (§8.2–8.4) for n tokens from host logits: fills sel / selw. */
static void route(ds4_session *s, const ds4_layer_weights *L, const float *bias, const int32_t *tok, int n,
                  float *bias_host) {
    ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model->hp;
    ds4_scratch *sc = &s->s;
    const int ne = (int)hp->n_expert, k = (int)hp->n_expert_used;
    float *u = sc->hrlog + (int64_t)(s->chunk + 1) * ne; /* host n_expert scratch after the bias row (session.c) */
    for (int t = 0; t < n; t++) {
        float *lg = sc->hrlog + (int64_t)t * ne; /* becomes the scores s_e */
        for (int i = 0; i < ne; i++) lg[i] = (float)sqrt(softplus(lg[i]));
        int32_t *sel = sc->sel + t * k;
        if (L->hash) {
            const int32_t *ids = (const int32_t *)L->tid2eid.data + (int64_t)tok[t] * k;
            for (int j = 0; j < k; j++) sel[j] = ids[j];
        } else {
            for (int i = 0; i < ne; i++) u[i] = lg[i] + (bias ? bias_host[i] : 0.0f);
            ds4_topk_host(u, ne, k, sel);
        }
        double sum = 0;
        for (int j = 0; j < k; j++) sum += lg[sel[j]];
        double denom = e->exact ? sum + 1e-20 : (sum > 6.103515625e-5 ? sum : 6.103515625e-5);
        for (int j = 0; j < k; j++)
            sc->selw[t * k + j] = (float)(lg[sel[j]] / denom * hp->expert_weights_scale);
    }
}

static void moe(ds4_session *s, int il, const int32_t *tok, int n) {
    ds4_engine *e = s->e;
    ds4_backend *be = e->be;
    const ds4_model *m = e->model;
    const ds4_hparams *hp = &m->hp;
    const ds4_layer_weights *L = &m->layers[il];
    const ds4_layer_vecs *v = &e->lv[il];
    ds4_scratch *sc = &s->s;
    const int64_t d = hp->n_embd, ff = hp->n_ff_exp;
    const int ne = (int)hp->n_expert, k = (int)hp->n_expert_used;
    const float clamp = hp->swiglu_clamp[il];

    be->matmul(be, &L->gate_inp, 0, 0, (uint64_t)ne, sc->x, d, sc->rlog, ne, n);
    if (be->moe_routed) {
        /* the backend routes and runs the experts (and the shared expert) in its memory:
         * no host round trip. The per-expert grouping below reads each expert once per
         * chunk but costs a few launches per (token, expert) pair for the gathers, the
         * SwiGLUs and the accumulation, which on a GPU outweighs re-reading the weights
         * (measured: prefill, bench/RESULTS.md). Both give the same values (backend.h). */
        const int32_t *hs = NULL;
        if (L->hash) {
            for (int t = 0; t < n; t++)
                memcpy(sc->sel + t * k, (const int32_t *)L->tid2eid.data + (int64_t)tok[t] * k, (size_t)k * sizeof(int32_t));
            hs = sc->sel;
        }
        be->moe_routed(be, sc->rlog, v->exp_probs_b, hs, &L->gate_exps, &L->up_exps, &L->down_exps, &L->gate_sh,
                       &L->up_sh, &L->down_sh, sc->x, n, k, hp->expert_weights_scale, clamp, sc->y);
        return; /* the shared expert is part of the op */
    } else {
        be->read(be, sc->hrlog, sc->rlog, (size_t)n * ne * sizeof(float));
        float *bias_host = sc->hrlog + (int64_t)n * ne; /* one extra row reserved for the bias */
        if (v->exp_probs_b) be->read(be, bias_host, v->exp_probs_b, (size_t)ne * sizeof(float));
        route(s, L, v->exp_probs_b, tok, n, bias_host);

        be->zero(be, sc->y, (size_t)n * d * sizeof(float));
        for (int ex = 0; ex < ne; ex++) {
            int cnt = 0;
            for (int t = 0; t < n; t++)
                for (int j = 0; j < k; j++)
                    if (sc->sel[t * k + j] == ex) {
                        sc->etok[cnt] = t;
                        sc->etw[cnt] = sc->selw[t * k + j];
                        cnt++;
                    }
            if (!cnt) continue;
            for (int j = 0; j < cnt; j++) be->copy(be, sc->xg + j * d, sc->x + sc->etok[j] * d, (size_t)d * sizeof(float));
            be->matmul(be, &L->gate_exps, (uint64_t)ex, 0, (uint64_t)ff, sc->xg, d, sc->g, ff, cnt);
            be->matmul(be, &L->up_exps, (uint64_t)ex, 0, (uint64_t)ff, sc->xg, d, sc->u, ff, cnt);
            if (e->exact) {
                /* transformers: (W2 m) · w */
                be->swiglu(be, sc->g, sc->u, sc->g, cnt * ff, clamp, 1.0f);
                be->matmul(be, &L->down_exps, (uint64_t)ex, 0, (uint64_t)d, sc->g, ff, sc->dn, d, cnt);
                for (int j = 0; j < cnt; j++) be->axpy(be, sc->y + sc->etok[j] * d, sc->dn + j * d, sc->etw[j], d);
            } else {
                /* official/ds4: W2 (w · m), so the quantised activation carries the weight */
                for (int j = 0; j < cnt; j++)
                    be->swiglu(be, sc->g + j * ff, sc->u + j * ff, sc->g + j * ff, ff, clamp, sc->etw[j]);
                be->matmul(be, &L->down_exps, (uint64_t)ex, 0, (uint64_t)d, sc->g, ff, sc->dn, d, cnt);
                for (int j = 0; j < cnt; j++) be->axpy(be, sc->y + sc->etok[j] * d, sc->dn + j * d, 1.0f, d);
            }
        }
    }
    /* shared expert, same clamp */
    {
        const ds4_tensor *W[2] = {&L->gate_sh, &L->up_sh};
        float *const y[2] = {sc->g, sc->u};
        const int64_t ys[2] = {ff, ff};
        matmul_set(be, 2, W, y, ys, sc->x, d, n);
    }
    be->swiglu(be, sc->g, sc->u, sc->g, n * ff, clamp, 1.0f);
    be->matmul(be, &L->down_sh, 0, 0, (uint64_t)d, sc->g, ff, sc->dn, d, n);
    be->axpy(be, sc->y, sc->dn, 1.0f, n * d);
}

/* The stateful part of attention_layer (qkv/rope, ring stores, compressor windows,
 * indexer selection, attention) for a chunk with the batched ops (backend.h): one launch
 * per step per sub-batch instead of per token. A sub-batch writes its positions' raw-cache
 * and compressor-ring slots before reading any, so it is bounded by the rings' slack over
 * the window: cap_raw = n_win + W holds the window of its first token and all its rows
 * when b <= W + 1, and cap_c = round_up(W + 2R, R) holds every entry its closing windows
 * pool (from (w0 − 1)·R) when b <= W. Returns false (nothing done) when the backend lacks
 * the ops; the caller then runs the per-token chain. Reads sc->q / kv / cproj / iproj / iq
 * / iw of the chunk, leaves the attention output of the last n_out tokens (the others' are
 * not needed: attention_layer) in their sc->ao rows. */
static bool attention_batched(ds4_session *s, int il, int n, int n_out) {
    ds4_engine *e = s->e;
    ds4_backend *be = e->be;
    const ds4_hparams *hp = &e->model->hp;
    const ds4_layer_weights *L = &e->model->layers[il];
    const ds4_layer_vecs *v = &e->lv[il];
    ds4_layer_state *ls = &s->ls[il];
    ds4_scratch *sc = &s->s;
    const bool csa = L->kind == DS4_ATTN_CSA;
    if (!be->qkv_rope_n || !be->compress_rows || !be->attention_n || (csa && !be->indexer_topk)) return false;
    const int64_t hd = hp->head_dim, nh = hp->n_head, qd = nh * hd, ihd = hp->idx_head_dim, inh = hp->idx_n_head;
    const int n_rot = (int)hp->n_rot, R = (int)L->ratio, topk = (int)hp->idx_topk;
    const int64_t cw = (int64_t)L->coff * hd;
    const float *inv = R ? e->inv_freq_comp : e->inv_freq_main;
    const float idx_scale = (float)(1.0 / sqrt((double)ihd) * (1.0 / sqrt((double)inh)));
    const float att_scale = (float)(1.0 / sqrt((double)hd));
    const int bmax = s->W > 0 ? (int)s->W : 1;
    const int64_t p0 = s->n_tokens;
    for (int t0 = 0; t0 < n; t0 += bmax) {
        const int b = n - t0 < bmax ? n - t0 : bmax;
        const int64_t pb = p0 + t0;
        float *pd[2];
        const float *ps[2], *pa[2];
        int pcap[2], pR[2];
        int64_t pss[2], pc[2];
        int np = 0;
        if (R) {
            pd[np] = ls->cfr, pcap[np] = ls->cap_c, ps[np] = sc->cproj + t0 * 2 * cw, pss[np] = 2 * cw;
            pa[np] = v->c_ape, pR[np] = R, pc[np] = cw, np++;
        }
        if (csa) {
            pd[np] = ls->ifr, pcap[np] = ls->cap_c, ps[np] = sc->iproj + t0 * 4 * ihd, pss[np] = 4 * ihd;
            pa[np] = v->i_ape, pR[np] = R, pc[np] = 2 * ihd, np++;
        }
        be->qkv_rope_n(be, sc->q + t0 * qd, qd, (int)nh, sc->kv + t0 * hd, hd, v->kv_norm, hd, n_rot, pb, b, inv,
                       !e->exact, hp->rms_eps, ls->raw, s->cap_raw, csa ? sc->iq + t0 * inh * ihd : NULL, inh * ihd,
                       (int)inh, ihd, np, pd, pcap, ps, pss, pa, pR, pc);
        if (R) {
            /* windows closing at positions pb .. pb + b − 1 */
            const int64_t w0 = (pb + R) / R - 1, w1 = (pb + b) / R;
            if (w1 > w0) {
                be->compress_rows(be, ls->cfr, ls->cap_c, R, (int)L->coff, hd, v->c_norm, hp->rms_eps, n_rot,
                                  e->inv_freq_comp, !e->exact, false, w0, w1, ls->comp);
                if (csa)
                    be->compress_rows(be, ls->ifr, ls->cap_c, R, 2, ihd, v->i_norm, hp->rms_eps, n_rot,
                                      e->inv_freq_comp, !e->exact, true, w0, w1, ls->icomp);
            }
        }
        /* the sub-batch's tokens whose attention output is needed: [a0, b) */
        const int a0 = n - n_out > t0 ? n - n_out - t0 : 0;
        if (a0 >= b) continue;
        const int64_t ta = t0 + a0, na = b - a0;
        const bool sel = csa && (pb + b) / R > topk; /* some of those tokens select */
        if (sel)
            be->indexer_topk(be, sc->iq + ta * inh * ihd, inh * ihd, sc->iw + ta * inh, inh, idx_scale, (int)inh, ihd,
                             ls->icomp, R, pb + a0, (int)na, topk, sc->comp_idx_dev);
        be->attention_n(be, sc->q + ta * qd, qd, (int)nh, hd, ls->raw, s->cap_raw, (int)hp->n_win, R ? ls->comp : NULL,
                        R, sel ? sc->comp_idx_dev : NULL, topk, v->sinks, att_scale, n_rot, pb + a0, (int)na, inv,
                        sc->ao + ta * qd, qd);
    }
    return true;
}

/* The stateful part of attention_layer one token at a time (§12.2): qkv/rope, ring stores,
 * compressor windows, indexer selection, attention — through the fused decode ops when the
 * backend has them, else the op sequences. Same inputs and outputs as attention_batched. */
static void attention_per_token(ds4_session *s, int il, int n) {
    ds4_engine *e = s->e;
    ds4_backend *be = e->be;
    const ds4_hparams *hp = &e->model->hp;
    const ds4_layer_weights *L = &e->model->layers[il];
    const ds4_layer_vecs *v = &e->lv[il];
    ds4_layer_state *ls = &s->ls[il];
    ds4_scratch *sc = &s->s;
    const int64_t hd = hp->head_dim, nh = hp->n_head, qd = nh * hd;
    const int64_t ihd = hp->idx_head_dim, inh = hp->idx_n_head;
    const int n_rot = (int)hp->n_rot, R = (int)L->ratio;
    const int64_t cw = (int64_t)L->coff * hd;
    const float *inv = R ? e->inv_freq_comp : e->inv_freq_main;
    const int64_t p0 = s->n_tokens;
    const bool csa = L->kind == DS4_ATTN_CSA;
    /* fused per-token chain (backend.h qkv_rope / attention_ex): the indexer query is
     * rotated with `inv`, which for CSA layers (R != 0) is inv_freq_comp as below */
    const bool fq = be->qkv_rope != NULL, fa = be->attention_ex != NULL;
    if (!fq) {
        be->rmsnorm(be, sc->q, hd, NULL, sc->q, hd, hd, (int)(n * nh), hp->rms_eps);
        be->rmsnorm(be, sc->kv, hd, v->kv_norm, sc->kv, hd, hd, n, hp->rms_eps);
    }
    const float idx_scale = (float)(1.0 / sqrt((double)ihd) * (1.0 / sqrt((double)inh)));
    const float att_scale = (float)(1.0 / sqrt((double)hd));

    for (int t = 0; t < n; t++) {
        const int64_t p = p0 + t;
        float *qt = sc->q + t * qd, *kvt = sc->kv + t * hd;
        const int n_vis = R ? (int)((p + 1) / R) : 0;
        const bool sel = csa && n_vis > (int)hp->idx_topk; /* indexer top-k selection */
        float *qi = sc->iq + t * inh * ihd;
        if (fq) {
            float *pd[2];
            const float *ps[2], *pa[2];
            int64_t pc[2];
            int np = 0;
            if (R) {
                pd[np] = ls->cfr + (p % ls->cap_c) * 2 * cw, ps[np] = sc->cproj + t * 2 * cw;
                pa[np] = v->c_ape + (p % R) * cw, pc[np] = cw, np++;
            }
            if (csa) {
                pd[np] = ls->ifr + (p % ls->cap_c) * 4 * ihd, ps[np] = sc->iproj + t * 4 * ihd;
                pa[np] = v->i_ape + (p % R) * 2 * ihd, pc[np] = 2 * ihd, np++;
            }
            be->qkv_rope(be, qt, (int)nh, kvt, v->kv_norm, hd, n_rot, p, inv, !e->exact, hp->rms_eps,
                         ls->raw + (p % s->cap_raw) * hd, sel ? qi : NULL, (int)inh, ihd, np, pd, ps, pa, pc);
        } else {
            be->rope(be, qt, hd, (int)nh, hd, n_rot, p, inv, false);
            be->rope(be, kvt, hd, 1, hd, n_rot, p, inv, false);
            if (!e->exact) {
                be->fp8_sim(be, kvt, hd, 1, hd - n_rot);
                be->round_f16(be, kvt, hd);
            }
            be->copy(be, ls->raw + (p % s->cap_raw) * hd, kvt, (size_t)hd * sizeof(float));
        }
        if (R) {
            compressor_step(s, sc->cproj + t * 2 * cw, ls->cfr, ls->cap_c, v->c_ape, R, (int)L->coff, hd, v->c_norm,
                            ls->comp, p, false, fq);
            if (csa)
                compressor_step(s, sc->iproj + t * 4 * ihd, ls->ifr, ls->cap_c, v->i_ape, R, 2, ihd, v->i_norm,
                                ls->icomp, p, true, fq);
        }
        /* visible rows (§7.10) */
        int nraw = 0;
        for (int64_t k = p - (int64_t)hp->n_win + 1; k <= p; k++)
            if (k >= 0) sc->raw_idx[nraw++] = (int32_t)(k % s->cap_raw);
        int ncomp = 0;
        const int32_t *cidx = sc->comp_idx;
        bool cdev = false;
        if (n_vis > 0) {
            if (!sel) {
                for (int c = 0; c < n_vis; c++) sc->comp_idx[c] = c;
                ncomp = n_vis;
            } else {
                if (!fq) {
                    be->rope(be, qi, ihd, (int)inh, ihd, n_rot, p, e->inv_freq_comp, false);
                    if (!e->exact) be->hadamard_fp4_sim(be, qi, ihd, (int)inh, ihd);
                }
                be->indexer_scores(be, qi, sc->iw + t * inh, idx_scale, (int)inh, ihd, ls->icomp, n_vis, sc->score);
                ncomp = (int)hp->idx_topk;
                if (be->topk_dev && fa) {
                    be->topk_dev(be, sc->score, n_vis, ncomp, sc->comp_idx_dev);
                    cidx = sc->comp_idx_dev;
                    cdev = true;
                } else {
                    be->topk(be, sc->score, n_vis, ncomp, sc->comp_idx);
                }
            }
        }
        float *ot = sc->ao + t * qd;
        if (fa) {
            be->attention_ex(be, qt, (int)nh, hd, ls->raw, sc->raw_idx, nraw, ls->comp, cidx, ncomp, cdev, v->sinks,
                             att_scale, n_rot, p, inv, ot);
        } else {
            be->attention(be, qt, (int)nh, hd, ls->raw, sc->raw_idx, nraw, ls->comp, sc->comp_idx, ncomp, v->sinks,
                          att_scale, ot);
            be->rope(be, ot, hd, (int)nh, hd, n_rot, p, inv, true);
        }
    }
}

/* Attention sublayer of layer il; its output is left in sc->y (the caller's next HC site
 * applies it). post_first: the previous sublayer's output is still pending. */
/* The attention sublayer for n tokens; the output projection only for the last n_out of
 * them (1 <= n_out <= n), written to sc->y rows 0 .. n_out − 1 (the state — caches, rings,
 * compressed rows — always advances by all n). */
static void attention_layer(ds4_session *s, int il, int n, bool post_first, int n_out) {
    ds4_engine *e = s->e;
    ds4_backend *be = e->be;
    const ds4_model *m = e->model;
    const ds4_hparams *hp = &m->hp;
    const ds4_layer_weights *L = &m->layers[il];
    const ds4_layer_vecs *v = &e->lv[il];
    ds4_scratch *sc = &s->s;
    const int64_t d = hp->n_embd, hd = hp->head_dim, nh = hp->n_head, qd = nh * hd, ql = hp->q_lora_rank;
    const int64_t ihd = hp->idx_head_dim, inh = hp->idx_n_head;
    const int R = (int)L->ratio;
    const int64_t cw = (int64_t)L->coff * hd;
    const bool csa = L->kind == DS4_ATTN_CSA;

    hc_next_site(s, post_first, &L->hc_attn_fn, v->hc_attn_scale, v->hc_attn_base, v->attn_norm, n);
    /* every projection of x (§7.2, §7.3, §7.5, §7.6): q low-rank A, the shared K=V head,
     * the compressor and indexer projections */
    {
        const ds4_tensor *W[8];
        float *y[8];
        int64_t ys[8];
        int cnt = 0;
#define ADD(t, out, stride) (W[cnt] = (t), y[cnt] = (out), ys[cnt] = (stride), cnt++)
        ADD(&L->q_a, sc->qr, ql);
        ADD(&L->kv, sc->kv, hd);
        if (R) {
            ADD(&L->c_kv, sc->cproj, 2 * cw);
            ADD(&L->c_gate, sc->cproj + cw, 2 * cw);
        }
        if (csa) {
            ADD(&L->i_kv, sc->iproj, 4 * ihd);
            ADD(&L->i_gate, sc->iproj + 2 * ihd, 4 * ihd);
            ADD(&L->i_proj, sc->iw, inh);
        }
        matmul_set(be, cnt, W, y, ys, sc->x, d, n);
        be->rmsnorm(be, sc->qr, ql, v->q_a_norm, sc->qr, ql, ql, n, hp->rms_eps);
        cnt = 0;
        ADD(&L->q_b, sc->q, qd);
        if (csa) ADD(&L->i_q_b, sc->iq, inh * ihd);
#undef ADD
        matmul_set(be, cnt, W, y, ys, sc->qr, ql, n);
    }
    if (!(n >= 2 && attention_batched(s, il, n, n_out))) attention_per_token(s, il, n);
    /* grouped output projection (§7.9) */
    const int64_t G = hp->n_out_group, ol = hp->o_lora_rank, gin = qd / G;
    const float *ao = sc->ao + (int64_t)(n - n_out) * qd;
    if (be->matmul_groups)
        be->matmul_groups(be, &L->o_a, (int)G, (uint64_t)ol, ao, gin, qd, sc->oa, G * ol, n_out);
    else
        for (int64_t g = 0; g < G; g++)
            be->matmul(be, &L->o_a, 0, (uint64_t)(g * ol), (uint64_t)ol, ao + g * gin, qd, sc->oa + g * ol, G * ol,
                       n_out);
    be->matmul(be, &L->o_b, 0, 0, (uint64_t)d, sc->oa, G * ol, sc->y, d, n_out);
}

/* Moves token row t of the HC state the next site reads (streams H, the attention site's
 * post / comb) to row 0, for a last layer that continues with that token alone. */
static void keep_token_row(ds4_session *s, int t) {
    ds4_backend *be = s->e->be;
    const ds4_hparams *hp = &s->e->model->hp;
    ds4_scratch *sc = &s->s;
    const int64_t h = hp->n_hc, hw = h * (int64_t)hp->n_embd;
    if (t == 0) return;
    be->copy(be, sc->H, sc->H + (int64_t)t * hw, (size_t)hw * sizeof(float));
    be->copy(be, sc->post, sc->post + (int64_t)t * h, (size_t)h * sizeof(float));
    be->copy(be, sc->comb, sc->comb + (int64_t)t * h * h, (size_t)(h * h) * sizeof(float));
}

int ds4_forward_chunk(ds4_session *s, const int32_t *tok, int n, bool all_logits, ds4_logits_cb cb, void *user) {
    ds4_engine *e = s->e;
    ds4_backend *be = e->be;
    const ds4_model *m = e->model;
    const ds4_hparams *hp = &m->hp;
    ds4_scratch *sc = &s->s;
    const int h = (int)hp->n_hc;
    const int64_t d = hp->n_embd, hw = (int64_t)h * d, nv = hp->n_vocab;
    DS4_ASSERT(n >= 1 && n <= s->chunk && s->n_tokens + n <= s->ctx);

    /* a decode step's ops, recorded and replayed as graphs where the backend can (backend.h
     * graph_begin): the same values, fewer launches */
    const bool graph = n == 1 && be->graph_begin && be->graph_end;
    if (graph) be->graph_begin(be);
    be->get_rows(be, &m->tok_embd, tok, n, sc->x);
    if (be->repeat_rows)
        be->repeat_rows(be, sc->H, sc->x, n, h, d);
    else
        for (int t = 0; t < n; t++)
            for (int k = 0; k < h; k++) be->copy(be, sc->H + t * hw + k * d, sc->x + t * d, (size_t)d * sizeof(float));

    /* each sublayer's output (sc->y) is applied to the streams by the next HC site. Only the
     * positions that need logits need the last layer past its attention state update (as
     * llama.cpp's output-row selection): without all_logits the last layer's output
     * projection, FFN site and MoE run for the last token alone (each op computes a token's
     * values independently of the others in its call, backend.h). */
    int cnt = n; /* rows of sc->H that are live: tokens n − cnt .. n − 1 */
    for (int il = 0; il < (int)hp->n_layer; il++) {
        const int n_out = !all_logits && il == (int)hp->n_layer - 1 ? 1 : n;
        attention_layer(s, il, n, il > 0, n_out);
        if (n_out < n) {
            keep_token_row(s, n - 1);
            cnt = n_out;
        }
        const ds4_layer_vecs *v = &e->lv[il];
        hc_next_site(s, true, &m->layers[il].hc_ffn_fn, v->hc_ffn_scale, v->hc_ffn_base, v->ffn_norm, cnt);
        moe(s, il, tok + (n - cnt), cnt);
    }
    if (hp->n_layer > 0) hc_apply(s, cnt);

    /* output head (§9) for the positions that need logits (the live rows' last cnt) */
    const int t0 = all_logits ? 0 : cnt - 1;
    cnt -= t0;
    const float *Hh = sc->H + t0 * hw;
    be->rmsnorm(be, Hh, hw, NULL, sc->flat, hw, hw, cnt, hp->rms_eps);
    be->matmul(be, &m->out_hc_fn, 0, 0, (uint64_t)h, sc->flat, hw, sc->mix, h, cnt);
    be->hc_head(be, sc->mix, e->out_hc_scale, e->out_hc_base, Hh, cnt, h, d, hp->hc_eps, sc->y);
    be->rmsnorm(be, sc->y, d, e->out_norm, sc->x, d, d, cnt, hp->rms_eps);
    be->matmul(be, &m->output, 0, 0, (uint64_t)nv, sc->x, d, sc->logits, nv, cnt);
    if (graph) be->graph_end(be);

    s->n_tokens += n;
    s->have_logits = true;
    s->dev_logits = NULL;
    /* logits live in backend memory (device memory on CUDA): each row the callback sees
     * is read into the host row s->last_logits, which ends holding the last position;
     * without a callback the last row stays there until someone asks (dev_logits). */
    const size_t row_bytes = (size_t)nv * sizeof(float);
    if (cb) {
        for (int t = 0; t < cnt; t++) {
            be->read(be, s->last_logits, sc->logits + (int64_t)t * nv, row_bytes);
            if (cb(user, (int)(s->n_tokens - cnt + t), s->last_logits, (int)nv)) {
                be->read(be, s->last_logits, sc->logits + (int64_t)(cnt - 1) * nv, row_bytes);
                return DS4_ERR_CANCELLED;
            }
        }
        return 0;
    }
    s->dev_logits = sc->logits + (int64_t)(cnt - 1) * nv;
    return 0;
}
