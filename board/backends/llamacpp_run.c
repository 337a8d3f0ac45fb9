/* rk-llama-run: a tiny driver over libllama for board/backends/llamacpp.py (greedy decoding and
 * log-probabilities of OUR token ids; llama-bench feeds random ids and owns its own timing).
 *
 *   rk-llama-run MODEL.gguf THREADS N_CTX
 *
 * Line protocol on stdin/stdout (one request at a time, every answer flushed at once):
 *   info                       -> "info n_vocab=V n_ctx_train=C n_params=P size=B desc=TEXT"
 *   gen N_GEN ID ID ...        -> one "t ID" line per generated token as soon as it exists (greedy
 *                                 argmax, end-of-generation tokens ignored), then "done"; the KV cache
 *                                 is cleared first, the prompt is decoded in one batch.
 *   logprobs ID ID ...         -> "lp N V" then N*V little-endian float32: log-softmax of the logits
 *                                 after each position (one window, empty KV cache).
 *   quit
 * Errors: "err MESSAGE" (the request failed, the driver keeps running). llama.cpp's own log lines
 * are dropped unless RK_LLAMA_LOG=1.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

#define MAX_LINE (1 << 22)

static void quiet_log(enum ggml_log_level level, const char *text, void *user) {
    (void)level; (void)user;
    if (getenv("RK_LLAMA_LOG")) fputs(text, stderr);
}

static int parse_ids(char *s, llama_token *ids, int max_ids, int n_vocab) {
    int n = 0;
    char *tok = strtok(s, " \t\r\n");
    while (tok) {
        char *end;
        long v = strtol(tok, &end, 10);
        if (*end || v < 0 || v >= n_vocab || n >= max_ids) return -1;
        ids[n++] = (llama_token)v;
        tok = strtok(NULL, " \t\r\n");
    }
    return n;
}

static int decode_all(struct llama_context *ctx, const llama_token *ids, int n, int all_logits) {
    struct llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = ids[i];
        b.pos[i] = i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = (int8_t)(all_logits || i == n - 1);
    }
    b.n_tokens = n;
    int rc = llama_decode(ctx, b);
    llama_batch_free(b);
    return rc;
}

static llama_token argmax(const float *logits, int n_vocab) {
    int best = 0;
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: rk-llama-run MODEL.gguf THREADS N_CTX\n");
        return 2;
    }
    int threads = atoi(argv[2]), n_ctx = atoi(argv[3]);
    if (threads < 1 || n_ctx < 8) {
        fprintf(stderr, "rk-llama-run: THREADS must be >= 1 and N_CTX >= 8\n");
        return 2;
    }
    llama_log_set(quiet_log, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "rk-llama-run: cannot load %s (not a GGUF file this llama.cpp reads)\n", argv[1]);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)n_ctx;
    cp.n_batch = (uint32_t)n_ctx;
    cp.n_ubatch = (uint32_t)n_ctx;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.no_perf = 1;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "rk-llama-run: cannot create a context (n_ctx %d)\n", n_ctx);
        return 1;
    }
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(vocab);
    char *line = malloc(MAX_LINE);
    llama_token *ids = malloc(sizeof(llama_token) * (size_t)n_ctx);
    float *row = malloc(sizeof(float) * (size_t)n_vocab);
    if (!line || !ids || !row) return 1;

    while (fgets(line, MAX_LINE, stdin)) {
        char *rest = line;
        char *cmd = strsep(&rest, " \t\r\n");
        if (!cmd || !*cmd) continue;
        if (!strcmp(cmd, "quit")) break;
        if (!strcmp(cmd, "info")) {
            char desc[256];
            llama_model_desc(model, desc, sizeof desc);
            printf("info n_vocab=%d n_ctx_train=%d n_params=%llu size=%llu desc=%s\n", n_vocab,
                   llama_model_n_ctx_train(model), (unsigned long long)llama_model_n_params(model),
                   (unsigned long long)llama_model_size(model), desc);
        } else if (!strcmp(cmd, "gen") || !strcmp(cmd, "logprobs")) {
            int gen = !strcmp(cmd, "gen");
            int n_gen = 0;
            if (gen) {
                char *ng = strsep(&rest, " \t\r\n");
                n_gen = ng ? atoi(ng) : -1;
            }
            int n = rest ? parse_ids(rest, ids, n_ctx, n_vocab) : 0;
            if (n <= 0 || n_gen < 0 || n + n_gen > n_ctx) {
                printf("err bad request: need 1..%d token ids below %d (and prompt + n_gen <= n_ctx)\n", n_ctx, n_vocab);
                fflush(stdout);
                continue;
            }
            llama_memory_clear(llama_get_memory(ctx), 1);
            if (decode_all(ctx, ids, n, !gen) != 0) {
                printf("err llama_decode failed on %d tokens\n", n);
                fflush(stdout);
                continue;
            }
            if (gen) {
                int ok = 1;
                for (int i = 0; i < n_gen; i++) {
                    llama_token t = argmax(llama_get_logits_ith(ctx, -1), n_vocab);
                    printf("t %d\n", t);
                    fflush(stdout);
                    if (i + 1 < n_gen) {
                        llama_token one[1] = {t};
                        struct llama_batch b = llama_batch_get_one(one, 1);
                        if (llama_decode(ctx, b) != 0) { ok = 0; break; }
                    }
                }
                printf(ok ? "done\n" : "err llama_decode failed while generating\n");
            } else {
                printf("lp %d %d\n", n, n_vocab);
                for (int i = 0; i < n; i++) {
                    const float *lg = llama_get_logits_ith(ctx, i);
                    double mx = lg[0], sum = 0.0;
                    for (int j = 1; j < n_vocab; j++) if (lg[j] > mx) mx = lg[j];
                    for (int j = 0; j < n_vocab; j++) sum += exp((double)lg[j] - mx);
                    double lse = mx + log(sum);
                    for (int j = 0; j < n_vocab; j++) row[j] = (float)((double)lg[j] - lse);
                    fwrite(row, sizeof(float), (size_t)n_vocab, stdout);
                }
            }
        } else {
            printf("err unknown request %s (info, gen, logprobs, quit)\n", cmd);
        }
        fflush(stdout);
    }
    free(line); free(ids); free(row);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
