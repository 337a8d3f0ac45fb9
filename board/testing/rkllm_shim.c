/*
 * rkllm_shim.c — a stand-in for librkllmrt.so that runs on any Linux host (tests only).
 *
 * Same exported symbols and struct layouts as the vendor's rkllm.h for ONE ABI version, chosen
 * at compile time:  gcc -shared -fPIC -O2 -DRKLLM_ABI_1_3_0 (or -DRKLLM_ABI_1_2_1, which covers
 * v1.2.1 .. v1.2.3) rkllm_shim.c -o librkllmrt.so
 * Layouts follow the documented field order (../shared/ROCKCHIP.md §3); the _Static_asserts pin
 * the sizes/offsets that order implies on LP64 (aarch64, x86_64).
 *
 * Behaviour (environment variables):
 *   RKLLM_SHIM_ECHO=FILE      append one JSON line per init/run with the parameters received, and
 *                             per run a "timing" line: the shim's own CLOCK_MONOTONIC stamps (ms) of
 *                             entering rkllm_run and of handing out the first and the last token —
 *                             a clock independent of the runner, which never reads this file
 *   RKLLM_SHIM_PREFILL_MS=F   prefill delay before the first token (default 50)
 *   RKLLM_SHIM_TOKEN_MS=F     delay between tokens (default 10); tokens follow absolute deadlines
 *   RKLLM_SHIM_ERROR_AT=K     after K tokens, call back with RKLLM_RUN_ERROR and stop
 *   RKLLM_SHIM_EOS_AT=K       the model "emits EOS" after K tokens: generation stops there unless
 *                             ignore_eos_token is set (v1.3.0 only)
 *   RKLLM_SHIM_WAITING_EVERY=N  every Nth token arrives in state RKLLM_RUN_WAITING (partial UTF-8)
 *   RKLLM_SHIM_VOCAB=N        vocabulary size for the emitted token ids (default 49152)
 * Infer mode RKLLM_INFER_GET_LOGITS: ONE RKLLM_RUN_NORMAL callback whose result.logits holds
 * num_tokens = n_input rows of vocab_size floats (row i: 8.0 at the token the shim would generate
 * after input token i, 0 elsewhere; made up, no model), then RKLLM_RUN_FINISH. Shim output only.
 *   RKLLM_LOG_LEVEL=1         print the runtime's version line and perf table to stdout
 *   RKLLM_SHIM_NO_FFLUSH=1    never fflush(stdout) (the log then sits in stdio's buffer)
 * Like the real runtime it rejects n_batch == 0 (and > 100) in rkllm_init, and refuses a model
 * file written by a different toolkit version (fake .rkllm files carry a JSON header).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(RKLLM_ABI_1_3_0)
#define SHIM_VERSION "1.3.0"
#elif defined(RKLLM_ABI_1_2_1)
#define SHIM_VERSION "1.2.1"
#else
#error "compile with -DRKLLM_ABI_1_3_0 or -DRKLLM_ABI_1_2_1"
#endif

/* Found by the version scanner (board/sysinfo.py LIB_VERSION; the doctor and the rkllm backend). */
__attribute__((used)) const char rkllm_shim_version_string[] = "librkllmrt version: " SHIM_VERSION " (rkdeploy shim)";

typedef void *LLMHandle;
typedef enum { RKLLM_RUN_NORMAL = 0, RKLLM_RUN_WAITING = 1, RKLLM_RUN_FINISH = 2, RKLLM_RUN_ERROR = 3 } LLMCallState;
typedef enum { RKLLM_INPUT_PROMPT = 0, RKLLM_INPUT_TOKEN = 1, RKLLM_INPUT_EMBED = 2, RKLLM_INPUT_MULTIMODAL = 3 } RKLLMInputType;
typedef enum { RKLLM_INFER_GENERATE = 0, RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1, RKLLM_INFER_GET_LOGITS = 2 } RKLLMInferMode;

typedef struct {
    int32_t base_domain_id;
    int8_t embed_flash;
    int8_t enabled_cpus_num;
    uint32_t enabled_cpus_mask;
    uint8_t n_batch;
    int8_t use_cross_attn;
    uint8_t reserved[104];
} RKLLMExtendParam;

typedef struct {
    const char *model_path;
    int32_t max_context_len;
    int32_t max_new_tokens;
    int32_t top_k;
    int32_t n_keep;
    float top_p;
    float temperature;
    float repeat_penalty;
    float frequency_penalty;
    float presence_penalty;
    int32_t mirostat;
    float mirostat_tau;
    float mirostat_eta;
    bool skip_special_token;
#ifdef RKLLM_ABI_1_3_0
    bool ignore_eos_token;
#endif
    bool is_async;
#ifdef RKLLM_ABI_1_2_1
    const char *img_start;
    const char *img_end;
    const char *img_content;
#endif
    RKLLMExtendParam extend_param;
} RKLLMParam;

typedef struct { const float *embed; size_t n_tokens; } RKLLMEmbedInput;
typedef struct { const int32_t *input_ids; size_t n_tokens; } RKLLMTokenInput;
#ifdef RKLLM_ABI_1_3_0
typedef struct {
    float *image_embed; size_t n_image_tokens; size_t n_image;
    const char *image_start; const char *image_end; const char *image_content;
    size_t image_width; size_t image_height;
} RKLLMImageInput;
typedef struct {
    float *video_embed; size_t n_frame_tokens; size_t n_frame_per_video; size_t n_video;
    const char *video_start; const char *video_end; const char *video_content;
    size_t frame_width; size_t frame_height;
} RKLLMVideoInput;
typedef struct { char *prompt; RKLLMImageInput image; RKLLMVideoInput video; } RKLLMMultiModalInput;
#else
typedef struct {
    char *prompt; float *image_embed; size_t n_image_tokens; size_t n_image; size_t image_width; size_t image_height;
} RKLLMMultiModalInput;
#endif

typedef struct {
    const char *role;
    bool enable_thinking;
    RKLLMInputType input_type;
    union {
        const char *prompt_input;
        RKLLMEmbedInput embed_input;
        RKLLMTokenInput token_input;
        RKLLMMultiModalInput multimodal_input;
    };
} RKLLMInput;

typedef struct {
    RKLLMInferMode mode;
    void *lora_params;
    void *prompt_cache_params;
#ifdef RKLLM_ABI_1_3_0
    void *sampling_params;
#endif
    int keep_history;
#ifdef RKLLM_ABI_1_3_0
    int32_t max_new_tokens;
#endif
} RKLLMInferParam;

typedef struct { const float *hidden_states; int embd_size; int num_tokens; } RKLLMResultLastHiddenLayer;
typedef struct { const float *logits; int vocab_size; int num_tokens; } RKLLMResultLogits;
typedef struct {
    float prefill_time_ms; int prefill_tokens; float generate_time_ms; int generate_tokens; float memory_usage_mb;
} RKLLMPerfStat;
typedef struct {
    const char *text;
    int32_t token_id;
    RKLLMResultLastHiddenLayer last_hidden_layer;
    RKLLMResultLogits logits;
    RKLLMPerfStat perf;
} RKLLMResult;

typedef int (*LLMResultCallback)(RKLLMResult *result, void *userdata, LLMCallState state);
#ifdef RKLLM_ABI_1_3_0
typedef struct {
    LLMResultCallback result_callback; void *result_userdata;
    void *tokenizer_callback; void *tokenizer_userdata;
    void *embed_callback; void *embed_userdata;
} RKLLMCallback;
#endif

/* --- layouts implied by the documented field order (LP64) ---------------------------------- */
#if defined(__LP64__)
_Static_assert(sizeof(RKLLMExtendParam) == 120, "RKLLMExtendParam size");
_Static_assert(offsetof(RKLLMExtendParam, enabled_cpus_mask) == 8, "enabled_cpus_mask offset");
_Static_assert(offsetof(RKLLMExtendParam, n_batch) == 12, "n_batch offset");
_Static_assert(offsetof(RKLLMExtendParam, reserved) == 14, "reserved offset");
_Static_assert(offsetof(RKLLMParam, max_context_len) == 8, "max_context_len offset");
_Static_assert(offsetof(RKLLMParam, skip_special_token) == 56, "skip_special_token offset");
_Static_assert(sizeof(RKLLMResult) == 72, "RKLLMResult size");
_Static_assert(offsetof(RKLLMResult, perf) == 48, "RKLLMResult.perf offset");
_Static_assert(sizeof(RKLLMPerfStat) == 20, "RKLLMPerfStat size");
_Static_assert(offsetof(RKLLMInput, input_type) == 12, "RKLLMInput.input_type offset");
_Static_assert(offsetof(RKLLMInput, token_input) == 16, "RKLLMInput union offset");
#ifdef RKLLM_ABI_1_3_0
_Static_assert(offsetof(RKLLMParam, ignore_eos_token) == 57, "ignore_eos_token offset");
_Static_assert(offsetof(RKLLMParam, is_async) == 58, "is_async offset");
_Static_assert(offsetof(RKLLMParam, extend_param) == 60, "extend_param offset");
_Static_assert(sizeof(RKLLMParam) == 184, "RKLLMParam size");
_Static_assert(sizeof(RKLLMMultiModalInput) == 144, "multimodal size");
_Static_assert(sizeof(RKLLMInput) == 160, "RKLLMInput size");
_Static_assert(offsetof(RKLLMInferParam, keep_history) == 32, "keep_history offset");
_Static_assert(offsetof(RKLLMInferParam, max_new_tokens) == 36, "max_new_tokens offset");
_Static_assert(sizeof(RKLLMInferParam) == 40, "RKLLMInferParam size");
_Static_assert(sizeof(RKLLMCallback) == 48, "RKLLMCallback size");
#else
_Static_assert(offsetof(RKLLMParam, is_async) == 57, "is_async offset");
_Static_assert(offsetof(RKLLMParam, img_start) == 64, "img_start offset");
_Static_assert(offsetof(RKLLMParam, extend_param) == 88, "extend_param offset");
_Static_assert(sizeof(RKLLMParam) == 208, "RKLLMParam size");
_Static_assert(sizeof(RKLLMMultiModalInput) == 48, "multimodal size");
_Static_assert(sizeof(RKLLMInput) == 64, "RKLLMInput size");
_Static_assert(offsetof(RKLLMInferParam, keep_history) == 24, "keep_history offset");
_Static_assert(sizeof(RKLLMInferParam) == 32, "RKLLMInferParam size");
#endif
#endif

/* Test-only introspection (not in the real library): sizes/offsets for the ctypes parity test. */
long rkllm_shim_layout(const char *what) {
#define L(name, expr) if (strcmp(what, name) == 0) return (long)(expr);
    L("abi", 0)
    L("RKLLMExtendParam", sizeof(RKLLMExtendParam))
    L("RKLLMExtendParam.n_batch", offsetof(RKLLMExtendParam, n_batch))
    L("RKLLMParam", sizeof(RKLLMParam))
    L("RKLLMParam.is_async", offsetof(RKLLMParam, is_async))
    L("RKLLMParam.extend_param", offsetof(RKLLMParam, extend_param))
    L("RKLLMInput", sizeof(RKLLMInput))
    L("RKLLMInput.token_input", offsetof(RKLLMInput, token_input))
    L("RKLLMInferParam", sizeof(RKLLMInferParam))
    L("RKLLMInferParam.keep_history", offsetof(RKLLMInferParam, keep_history))
    L("RKLLMResult", sizeof(RKLLMResult))
    L("RKLLMResult.perf", offsetof(RKLLMResult, perf))
#ifdef RKLLM_ABI_1_3_0
    L("RKLLMParam.ignore_eos_token", offsetof(RKLLMParam, ignore_eos_token))
    L("RKLLMInferParam.max_new_tokens", offsetof(RKLLMInferParam, max_new_tokens))
    L("RKLLMCallback", sizeof(RKLLMCallback))
#else
    L("RKLLMParam.img_start", offsetof(RKLLMParam, img_start))
#endif
#undef L
    return -1;
}

/* --- helpers ----------------------------------------------------------------------------------- */
typedef struct {
    RKLLMParam param;
    LLMResultCallback cb;
    void *cb_userdata;
    volatile int running;
    volatile int abort_flag;
} Shim;

static double env_f(const char *name, double dflt) {
    const char *v = getenv(name);
    return v && *v ? atof(v) : dflt;
}

static long env_i(const char *name, long dflt) {
    const char *v = getenv(name);
    return v && *v ? atol(v) : dflt;
}

static int log_level(void) { return (int)env_i("RKLLM_LOG_LEVEL", 0); }

/* RKLLM_SHIM_NO_FFLUSH=1 leaves the log in stdio's buffer, as a runtime that never flushes would. */
static void shim_flush(void) {
    if (!getenv("RKLLM_SHIM_NO_FFLUSH")) fflush(stdout);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void sleep_until_ms(double deadline) {
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline / 1e3);
    ts.tv_nsec = (long)((deadline - ts.tv_sec * 1e3) * 1e6);
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec += 1; ts.tv_nsec -= 1000000000L; }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0) {}
}

static float vmhwm_mb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = 0;
    if (!f) return 0.0f;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) kb = atol(line + 6);
    fclose(f);
    return kb / 1024.0f;
}

static FILE *echo_open(void) {
    const char *path = getenv("RKLLM_SHIM_ECHO");
    return path && *path ? fopen(path, "a") : NULL;
}

static const char *str_or_empty(const char *s) { return s ? s : ""; }

/* "toolkit_version": "X" from a fake .rkllm header; 1 = compatible, 0 = not, -1 = unknown file. */
static int model_matches(const char *path, char *found, size_t n) {
    char buf[2048];
    FILE *f = fopen(path, "rb");
    size_t got;
    const char *key, *p;
    if (!f) return -2;
    got = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[got] = 0;
    if (strncmp(buf, "RKLLM-FAKE\n", 11) != 0) return -1;
    key = strstr(buf, "\"toolkit_version\": \"");
    if (!key) return -1;
    p = key + strlen("\"toolkit_version\": \"");
    snprintf(found, n, "%.*s", (int)strcspn(p, "\""), p);
#ifdef RKLLM_ABI_1_3_0
    return strncmp(found, "1.3.0", 5) == 0;
#else
    return strcmp(found, "1.2.1") == 0 || strcmp(found, "1.2.2") == 0 || strcmp(found, "1.2.3") == 0;
#endif
}

/* --- the C API ------------------------------------------------------------------------------- */
RKLLMParam rkllm_createDefaultParam(void) {
    RKLLMParam p;
    memset(&p, 0, sizeof p);
    p.model_path = NULL;
    p.max_context_len = 512;
    p.max_new_tokens = -1;
    p.top_k = 40;
    p.n_keep = 0;
    p.top_p = 0.9f;
    p.temperature = 0.8f;
    p.repeat_penalty = 1.1f;
    p.mirostat = 0;
    p.mirostat_tau = 5.0f;
    p.mirostat_eta = 0.1f;
    p.extend_param.n_batch = 1;
    return p;
}

#ifdef RKLLM_ABI_1_3_0
int rkllm_init(LLMHandle *handle, RKLLMParam *param, RKLLMCallback *callback)
#else
int rkllm_init(LLMHandle *handle, RKLLMParam *param, LLMResultCallback callback)
#endif
{
    FILE *echo = echo_open();
    char found[64] = "";
    int match;
    Shim *s;
    if (!handle || !param) return -1;
    if (echo) {
        fprintf(echo, "{\"event\": \"init\", \"abi\": \"%s\", \"model_path\": \"%s\", \"max_context_len\": %d, "
                "\"max_new_tokens\": %d, \"top_k\": %d, \"n_keep\": %d, \"top_p\": %.4f, \"temperature\": %.4f, "
                "\"repeat_penalty\": %.4f, \"skip_special_token\": %d, \"is_async\": %d, "
#ifdef RKLLM_ABI_1_3_0
                "\"ignore_eos_token\": %d, "
#endif
                "\"base_domain_id\": %d, \"embed_flash\": %d, \"enabled_cpus_num\": %d, \"enabled_cpus_mask\": %u, "
                "\"n_batch\": %d, \"use_cross_attn\": %d}\n",
                SHIM_VERSION, str_or_empty(param->model_path), param->max_context_len, param->max_new_tokens,
                param->top_k, param->n_keep, param->top_p, param->temperature, param->repeat_penalty,
                param->skip_special_token, param->is_async,
#ifdef RKLLM_ABI_1_3_0
                param->ignore_eos_token,
#endif
                param->extend_param.base_domain_id, param->extend_param.embed_flash,
                param->extend_param.enabled_cpus_num, param->extend_param.enabled_cpus_mask,
                param->extend_param.n_batch, param->extend_param.use_cross_attn);
        fclose(echo);
    }
    if (log_level() >= 1) {
        printf("I rkllm: rkllm-runtime version: %s, rknpu driver version: 0.9.8, platform: SHIM\n", SHIM_VERSION);
        shim_flush();
    }
    if (param->extend_param.n_batch < 1 || param->extend_param.n_batch > 100) {
        printf("E rkllm: n_batch %d is out of range, it must be in [1, 100]\n", param->extend_param.n_batch);
        shim_flush();
        return -1;
    }
    if (!param->model_path) { printf("E rkllm: model_path is NULL\n"); shim_flush(); return -1; }
    match = model_matches(param->model_path, found, sizeof found);
    if (match == -2) { printf("E rkllm: cannot open %s\n", param->model_path); shim_flush(); return -1; }
    if (match == 0) {
        printf("E rkllm: invalid rkllm model: built by rkllm-toolkit %s, this runtime is %s\n", found, SHIM_VERSION);
        shim_flush();
        return -1;
    }
    if (param->max_context_len <= 0) { printf("E rkllm: max_context_len must be > 0\n"); shim_flush(); return -1; }
#ifdef RKLLM_ABI_1_3_0
    if (!callback || !callback->result_callback) return -1;
#else
    if (!callback) return -1;
#endif
    s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->param = *param;
#ifdef RKLLM_ABI_1_3_0
    s->cb = callback->result_callback;
    s->cb_userdata = callback->result_userdata;
#else
    s->cb = callback;
#endif
    *handle = s;
    return 0;
}

int rkllm_run(LLMHandle handle, RKLLMInput *input, RKLLMInferParam *infer, void *userdata) {
    Shim *s = (Shim *)handle;
    FILE *echo = echo_open();
    RKLLMResult r;
    double prefill = env_f("RKLLM_SHIM_PREFILL_MS", 50.0), tok = env_f("RKLLM_SHIM_TOKEN_MS", 10.0);
    long error_at = env_i("RKLLM_SHIM_ERROR_AT", -1), eos_at = env_i("RKLLM_SHIM_EOS_AT", -1);
    long waiting_every = env_i("RKLLM_SHIM_WAITING_EVERY", 0), vocab = env_i("RKLLM_SHIM_VOCAB", 49152);
    long n_gen, i, emitted = 0;
    size_t n_in = 0;
    int64_t sum = 0;
    int32_t last = 0;
    double t0, t_first = 0, t_last = 0;
    bool ignore_eos = false;
    void *ud;
    if (!s || !input || !infer) return -1;
    t0 = now_ms();
    ud = userdata ? userdata : s->cb_userdata;
    if (input->input_type == RKLLM_INPUT_TOKEN && input->token_input.input_ids) {
        n_in = input->token_input.n_tokens;
        for (i = 0; i < (long)n_in; i++) sum += input->token_input.input_ids[i];
        last = n_in ? input->token_input.input_ids[n_in - 1] : 0;
    } else if (input->input_type == RKLLM_INPUT_PROMPT && input->prompt_input) {
        n_in = strlen(input->prompt_input) / 4 + 1;
    }
#ifdef RKLLM_ABI_1_3_0
    n_gen = infer->max_new_tokens > 0 ? infer->max_new_tokens : s->param.max_new_tokens;
    ignore_eos = s->param.ignore_eos_token;
#else
    n_gen = s->param.max_new_tokens;
#endif
    if (echo) {
        fprintf(echo, "{\"event\": \"run\", \"abi\": \"%s\", \"role\": \"%s\", \"enable_thinking\": %d, \"input_type\": %d, "
                "\"n_tokens\": %zu, \"first_id\": %d, \"last_id\": %d, \"sum_ids\": %lld, \"mode\": %d, \"keep_history\": %d, "
#ifdef RKLLM_ABI_1_3_0
                "\"infer_max_new_tokens\": %d, "
#endif
                "\"n_gen\": %ld}\n",
                SHIM_VERSION, str_or_empty(input->role), input->enable_thinking, input->input_type, n_in,
                (input->input_type == RKLLM_INPUT_TOKEN && n_in) ? input->token_input.input_ids[0] : -1, last,
                (long long)sum, infer->mode, infer->keep_history,
#ifdef RKLLM_ABI_1_3_0
                infer->max_new_tokens,
#endif
                n_gen);
        fclose(echo);
    }
    if (n_in == 0) { printf("E rkllm: empty input\n"); shim_flush(); return -1; }
    if ((long)n_in + (n_gen > 0 ? n_gen : 0) > s->param.max_context_len) {
        printf("E rkllm: input %zu + %ld new tokens exceed max_context_len %d\n", n_in, n_gen, (int)s->param.max_context_len);
        shim_flush();
        return -1;
    }
    if (infer->mode == RKLLM_INFER_GET_LOGITS && input->input_type == RKLLM_INPUT_TOKEN) {
        float *buf = calloc(n_in * (size_t)vocab, sizeof *buf);
        if (!buf) return -1;
        for (i = 0; i < (long)n_in; i++)
            buf[(size_t)i * (size_t)vocab + (size_t)(((int64_t)input->token_input.input_ids[i] * 31 + 7) % vocab)] = 8.0f;
        sleep_until_ms(t0 + prefill);
        memset(&r, 0, sizeof r);
        r.logits.logits = buf;
        r.logits.vocab_size = (int)vocab;
        r.logits.num_tokens = (int)n_in;
        s->cb(&r, ud, RKLLM_RUN_NORMAL);
        free(buf);
        memset(&r, 0, sizeof r);
        r.perf.prefill_time_ms = (float)(now_ms() - t0);
        r.perf.prefill_tokens = (int)n_in;
        s->cb(&r, ud, RKLLM_RUN_FINISH);
        return 0;
    }
    if (n_gen <= 0) n_gen = 16;
    s->running = 1;
    s->abort_flag = 0;
    memset(&r, 0, sizeof r);
    for (i = 0; i < n_gen; i++) {
        LLMCallState st = (waiting_every > 0 && (i + 1) % waiting_every == 0) ? RKLLM_RUN_WAITING : RKLLM_RUN_NORMAL;
        if (error_at >= 0 && i == error_at) {
            memset(&r, 0, sizeof r);
            s->cb(&r, ud, RKLLM_RUN_ERROR);
            s->running = 0;
            return 0; /* the error travels through the callback only */
        }
        if (eos_at >= 0 && i == eos_at && !ignore_eos) break;
        sleep_until_ms(t0 + prefill + i * tok);
        last = (int32_t)(((int64_t)last * 31 + 7) % vocab);
        r.text = st == RKLLM_RUN_WAITING ? NULL : "tok";
        r.token_id = last;
        if (i == 0) t_first = now_ms();
        t_last = now_ms();
        emitted++;
        if (s->cb(&r, ud, st) == 1 || s->abort_flag) break;
    }
    echo = echo_open();
    if (echo) {
        fprintf(echo, "{\"event\": \"timing\", \"abi\": \"%s\", \"t_enter_ms\": %.6f, \"t_first_ms\": %.6f, "
                "\"t_last_ms\": %.6f, \"tokens\": %ld, \"prefill_ms\": %.6f, \"token_ms\": %.6f}\n",
                SHIM_VERSION, t0, t_first, t_last, emitted, prefill, tok);
        fclose(echo);
    }
    memset(&r, 0, sizeof r);
    r.perf.prefill_time_ms = (float)(t_first - t0);
    r.perf.prefill_tokens = (int)n_in;
    r.perf.generate_time_ms = (float)(t_last - t_first);
    r.perf.generate_tokens = (int)emitted;
    r.perf.memory_usage_mb = vmhwm_mb();
    if (log_level() >= 1) {
        printf("I rkllm: Prefill %.2f ms, %d tokens, %.2f tokens/s\n", r.perf.prefill_time_ms, r.perf.prefill_tokens,
               r.perf.prefill_time_ms > 0 ? r.perf.prefill_tokens * 1000.0 / r.perf.prefill_time_ms : 0.0);
        printf("I rkllm: Generate %.2f ms, %d tokens, %.2f tokens/s\n", r.perf.generate_time_ms, r.perf.generate_tokens,
               r.perf.generate_time_ms > 0 ? (r.perf.generate_tokens - 1) * 1000.0 / r.perf.generate_time_ms : 0.0);
        printf("I rkllm: Peak Memory Usage (GB): %.2f\n", r.perf.memory_usage_mb / 1024.0);
        shim_flush();
    }
    s->cb(&r, ud, RKLLM_RUN_FINISH);
    s->running = 0;
    return 0;
}

int rkllm_run_async(LLMHandle handle, RKLLMInput *input, RKLLMInferParam *infer, void *userdata) {
    return rkllm_run(handle, input, infer, userdata);
}

int rkllm_abort(LLMHandle handle) {
    if (handle) ((Shim *)handle)->abort_flag = 1;
    return 0;
}

int rkllm_is_running(LLMHandle handle) { return handle && ((Shim *)handle)->running ? 1 : 0; }

int rkllm_destroy(LLMHandle handle) {
    free(handle);
    return 0;
}

int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt, int *start_pos, int *end_pos) {
    (void)keep_system_prompt; (void)start_pos; (void)end_pos;
    return handle ? 0 : -1;
}

int rkllm_set_chat_template(LLMHandle handle, const char *system_prompt, const char *prompt_prefix, const char *prompt_postfix) {
    (void)system_prompt; (void)prompt_prefix; (void)prompt_postfix;
    return handle ? 0 : -1;
}

int rkllm_load_lora(LLMHandle handle, void *lora_adapter) { (void)lora_adapter; return handle ? 0 : -1; }
int rkllm_load_prompt_cache(LLMHandle handle, const char *path) { (void)path; return handle ? 0 : -1; }
int rkllm_release_prompt_cache(LLMHandle handle) { return handle ? 0 : -1; }
