/*
 * rknn_shim.c — a stand-in for Rockchip's librknnrt.so (the RKNN C API, rknn_api.h) for tests and
 * the virtual board (host/vboard/ cross-compiles it with aarch64-linux-gnu-gcc into the board's
 * /usr/lib/librknnrt.so). It lets the REAL rknn-toolkit-lite2 wheel run end to end without an NPU.
 *
 *   gcc -std=c11 -D_GNU_SOURCE -O2 -shared -fPIC rknn_shim.c -o librknnrt.so
 *
 * Exports the rknn_api.h functions the wheel resolves through ctypes (rknn_init, rknn_query,
 * rknn_inputs_set, rknn_run, rknn_outputs_get, rknn_outputs_release, rknn_destroy,
 * rknn_set_core_mask, ...) with the documented struct layouts (the _Static_asserts pin them on LP64).
 *
 * Models: the shim does not run networks. A model is a text header written by
 * board/testing/rknn_artifacts.py from our manifest (input/output shapes, injected latency):
 *
 *     RKNN-SHIM 1
 *     target rk3588
 *     run_ms 20
 *     input input_ids int64 1 16
 *     output last_hidden_state float32 1 16 8
 *     end
 *
 * ``$RKNN_SHIM_SPEC`` names such a file for any other model bytes (a real .rknn), or a folder of
 * them named by the model's FNV-1a 64-bit hash, ``<16 hex digits>.spec`` (the virtual board keeps
 * one per real .rknn pushed to it, written from the artifact's manifest); without a spec a real
 * model is refused with RKNN_ERR_MODEL_INVALID and one line on stderr.
 * Behaviour, as the runtime documents it:
 *   - rknn_init fails with RKNN_ERR_TARGET_PLATFORM_UNMATCH when the model's target is not the chip
 *     named by the device tree (/proc/device-tree/compatible or /sys/firmware/devicetree/base/compatible);
 *   - rknn_set_core_mask accepts AUTO, 0, 1, 2, 0_1, 0_1_2, ALL, and only cores the chip has;
 *   - rknn_inputs_set checks count, index and byte size (as the model's element count × the size of
 *     the buffer's type); rknn_run sleeps run_ms (env RKNN_SHIM_RUN_MS overrides) and records
 *     RKNN_QUERY_PERF_RUN (its echo line carries its CLOCK_MONOTONIC t_enter_ms / t_exit_ms);
 *     rknn_outputs_get returns float32 (want_float) or the native int8 (affine scale 1/127),
 *     out[b, s, h] = sin(in0[b, s] * (1 + h)) for the first input's values.
 * RKNN_SHIM_ECHO=FILE appends one JSON line per API call (name, arguments, pid) for assertions.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SHIM_VERSION "2.5.0"
/* Found by version scanners (board/sysinfo.py LIB_VERSION). */
__attribute__((used)) const char rknn_shim_version_string[] = "librknnrt version: " SHIM_VERSION " (rkdeploy shim)";

#define RKNN_SUCC 0
#define RKNN_ERR_FAIL -1
#define RKNN_ERR_PARAM_INVALID -5
#define RKNN_ERR_MODEL_INVALID -6
#define RKNN_ERR_CTX_INVALID -7
#define RKNN_ERR_INPUT_INVALID -8
#define RKNN_ERR_OUTPUT_INVALID -9
#define RKNN_ERR_TARGET_PLATFORM_UNMATCH -13
#define RKNN_MAX_DIMS 16
#define RKNN_MAX_NAME_LEN 256
#define SHIM_MAX_IO 8

typedef uint64_t rknn_context;

enum { Q_IN_OUT_NUM = 0, Q_INPUT_ATTR = 1, Q_OUTPUT_ATTR = 2, Q_PERF_DETAIL = 3, Q_PERF_RUN = 4, Q_SDK_VERSION = 5,
       Q_MEM_SIZE = 6, Q_CUSTOM_STRING = 7, Q_NATIVE_INPUT_ATTR = 8, Q_NATIVE_OUTPUT_ATTR = 9,
       Q_NATIVE_NHWC_INPUT_ATTR = 10, Q_NATIVE_NHWC_OUTPUT_ATTR = 11, Q_DEVICE_MEM_INFO = 12,
       Q_INPUT_DYNAMIC_RANGE = 13, Q_CURRENT_INPUT_ATTR = 14, Q_CURRENT_OUTPUT_ATTR = 15,
       Q_CURRENT_NATIVE_INPUT_ATTR = 16, Q_CURRENT_NATIVE_OUTPUT_ATTR = 17 };
enum { T_FLOAT32 = 0, T_FLOAT16, T_INT8, T_UINT8, T_INT16, T_UINT16, T_INT32, T_UINT32, T_INT64, T_BOOL, T_INT4,
       T_BFLOAT16 };
enum { FMT_NCHW = 0, FMT_NHWC = 1, FMT_NC1HWC2 = 2, FMT_UNDEFINED = 3 };
enum { QNT_NONE = 0, QNT_DFP = 1, QNT_AFFINE = 2 };

typedef struct { uint32_t n_input; uint32_t n_output; } rknn_input_output_num;
typedef struct {
    uint32_t index;
    uint32_t n_dims;
    uint32_t dims[RKNN_MAX_DIMS];
    char name[RKNN_MAX_NAME_LEN];
    uint32_t n_elems;
    uint32_t size;
    int fmt;
    int type;
    int qnt_type;
    int8_t fl;
    int32_t zp;
    float scale;
    uint32_t w_stride;
    uint32_t size_with_stride;
    uint8_t pass_through;
    uint32_t h_stride;
} rknn_tensor_attr;
typedef struct { int64_t run_duration; } rknn_perf_run;
typedef struct { char *perf_data; uint64_t data_len; } rknn_perf_detail;
typedef struct { char api_version[256]; char drv_version[256]; } rknn_sdk_version;
typedef struct {
    uint32_t total_weight_size; uint32_t total_internal_size; uint64_t total_dma_allocated_size;
    uint32_t total_sram_size; uint32_t free_sram_size; uint32_t reserved[10];
} rknn_mem_size;
typedef struct { char string[1024]; } rknn_custom_string;
typedef struct { uint32_t index; void *buf; uint32_t size; uint8_t pass_through; int type; int fmt; } rknn_input;
typedef struct { uint8_t want_float; uint8_t is_prealloc; uint32_t index; void *buf; uint32_t size; } rknn_output;
typedef struct {
    rknn_context ctx; int32_t real_model_offset; uint32_t real_model_size; int32_t model_buffer_fd;
    uint32_t model_buffer_flags; uint8_t reserved[112];
} rknn_init_extend;
typedef struct { uint64_t frame_id; int32_t non_block; int32_t timeout_ms; int32_t fence_fd; } rknn_run_extend;
typedef struct { uint64_t frame_id; } rknn_output_extend;

#if defined(__LP64__)
_Static_assert(sizeof(rknn_tensor_attr) == 376, "rknn_tensor_attr size");
_Static_assert(offsetof(rknn_tensor_attr, n_elems) == 328, "rknn_tensor_attr.n_elems offset");
_Static_assert(offsetof(rknn_tensor_attr, zp) == 352, "rknn_tensor_attr.zp offset");
_Static_assert(offsetof(rknn_tensor_attr, h_stride) == 372, "rknn_tensor_attr.h_stride offset");
_Static_assert(sizeof(rknn_input) == 32, "rknn_input size");
_Static_assert(sizeof(rknn_output) == 24, "rknn_output size");
_Static_assert(offsetof(rknn_output, buf) == 8, "rknn_output.buf offset");
_Static_assert(sizeof(rknn_sdk_version) == 512, "rknn_sdk_version size");
_Static_assert(sizeof(rknn_init_extend) == 136, "rknn_init_extend size");
_Static_assert(sizeof(rknn_run_extend) == 24, "rknn_run_extend size");
#endif

typedef struct {
    char name[RKNN_MAX_NAME_LEN];
    int type;
    uint32_t n_dims;
    uint32_t dims[RKNN_MAX_DIMS];
    uint32_t n_elems;
} shim_tensor;

typedef struct {
    uint32_t magic;
    char target[32];
    double run_ms;
    int npu_cores;
    uint32_t n_in, n_out;
    shim_tensor in[SHIM_MAX_IO], out[SHIM_MAX_IO];
    uint32_t core_mask;
    void *in_data;        /* copy of input 0 (the token ids), as float per element */
    int inputs_set;
    int ran;
    int64_t last_run_us;
    void *out_bufs[SHIM_MAX_IO];
} shim_ctx;

#define SHIM_MAGIC 0x524b4e4eu

static int type_size(int t) {
    switch (t) {
    case T_FLOAT32: case T_INT32: case T_UINT32: return 4;
    case T_FLOAT16: case T_INT16: case T_UINT16: case T_BFLOAT16: return 2;
    case T_INT8: case T_UINT8: case T_BOOL: return 1;
    case T_INT64: return 8;
    default: return 0;
    }
}

static int parse_type(const char *s) {
    static const char *names[] = {"float32", "float16", "int8", "uint8", "int16", "uint16", "int32", "uint32",
                                  "int64", "bool"};
    for (int i = 0; i < (int)(sizeof(names) / sizeof(names[0])); i++)
        if (strcmp(s, names[i]) == 0) return i;
    return -1;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void echo(const char *fmt, ...) {
    const char *path = getenv("RKNN_SHIM_ECHO");
    if (!path || !*path) return;
    FILE *f = fopen(path, "a");
    if (!f) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(f, "{\"pid\": %d, ", (int)getpid());
    vfprintf(f, fmt, ap);
    fprintf(f, "}\n");
    va_end(ap);
    fclose(f);
}

static shim_ctx *get_ctx(rknn_context c) {
    shim_ctx *ctx = (shim_ctx *)(uintptr_t)c;
    return (ctx && ctx->magic == SHIM_MAGIC) ? ctx : NULL;
}

/* Parse "RKNN-SHIM 1\n..." text; returns 0 or a message in err. */
static int parse_spec(shim_ctx *ctx, const char *text, size_t len, char *err, size_t errlen) {
    char *buf = malloc(len + 1);
    if (!buf) { snprintf(err, errlen, "out of memory"); return -1; }
    memcpy(buf, text, len);
    buf[len] = 0;
    char *save = NULL;
    int line_no = 0, ended = 0;
    ctx->run_ms = 10.0;
    ctx->npu_cores = 3;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        line_no++;
        char key[32] = {0};
        int used = 0;
        if (line_no == 1) {
            if (strncmp(line, "RKNN-SHIM 1", 11) != 0) { snprintf(err, errlen, "not an RKNN-SHIM 1 model"); free(buf); return -1; }
            continue;
        }
        if (sscanf(line, "%31s %n", key, &used) < 1) continue;
        const char *rest = line + used;
        if (strcmp(key, "end") == 0) { ended = 1; break; }
        if (strcmp(key, "target") == 0) {
            sscanf(rest, "%31s", ctx->target);
        } else if (strcmp(key, "run_ms") == 0) {
            ctx->run_ms = atof(rest);
        } else if (strcmp(key, "npu_cores") == 0) {
            ctx->npu_cores = atoi(rest);
        } else if (strcmp(key, "input") == 0 || strcmp(key, "output") == 0) {
            int is_in = key[0] == 'i';
            uint32_t *n = is_in ? &ctx->n_in : &ctx->n_out;
            if (*n >= SHIM_MAX_IO) { snprintf(err, errlen, "line %d: more than %d tensors", line_no, SHIM_MAX_IO); free(buf); return -1; }
            shim_tensor *t = is_in ? &ctx->in[*n] : &ctx->out[*n];
            char tname[32] = {0};
            int off = 0;
            if (sscanf(rest, "%255s %31s %n", t->name, tname, &off) < 2 || (t->type = parse_type(tname)) < 0) {
                snprintf(err, errlen, "line %d: want '%s NAME TYPE DIM...'", line_no, key); free(buf); return -1;
            }
            const char *p = rest + off;
            t->n_elems = 1;
            while (*p && t->n_dims < RKNN_MAX_DIMS) {
                char *end;
                unsigned long d = strtoul(p, &end, 10);
                if (end == p) break;
                t->dims[t->n_dims++] = (uint32_t)d;
                t->n_elems *= (uint32_t)d;
                p = end;
            }
            if (t->n_dims == 0) { snprintf(err, errlen, "line %d: tensor %.64s has no dims", line_no, t->name); free(buf); return -1; }
            (*n)++;
        }
    }
    free(buf);
    if (!ended) { snprintf(err, errlen, "no 'end' line"); return -1; }
    if (ctx->n_in == 0 || ctx->n_out == 0) { snprintf(err, errlen, "a model needs at least one input and one output"); return -1; }
    return 0;
}

/* The chip named by the device tree ("rockchip,rk3588" -> "rk3588"), or "" when unknown. */
static void board_chip(char *out, size_t outlen) {
    static const char *paths[] = {"/proc/device-tree/compatible", "/sys/firmware/devicetree/base/compatible"};
    out[0] = 0;
    for (size_t i = 0; i < 2; i++) {
        FILE *f = fopen(paths[i], "rb");
        if (!f) continue;
        char buf[512];
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        for (size_t j = 0; j < n; j++) if (buf[j] == 0) buf[j] = ' ';
        char *hit = strstr(buf, "rockchip,rk");
        if (hit) {
            hit += strlen("rockchip,");
            size_t k = 0;
            while (hit[k] && hit[k] != ' ' && k + 1 < outlen) { out[k] = hit[k]; k++; }
            out[k] = 0;
            return;
        }
    }
}

/* FNV-1a, 64 bit: the key of a real model's spec in a $RKNN_SHIM_SPEC folder (rknn_artifacts.model_key). */
static uint64_t fnv1a64(const char *data, size_t len) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; data && i < len; i++) {
        h ^= (unsigned char)data[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static int load_model(shim_ctx *ctx, void *model, uint32_t size) {
    char err[256] = {0};
    char *owned = NULL;
    const char *data = model;
    size_t len = size;
    if (size == 0 && model) { /* size 0: model is a path */
        FILE *f = fopen((const char *)model, "rb");
        if (!f) { fprintf(stderr, "E RKNN: rknn shim: cannot open model %s\n", (const char *)model); return RKNN_ERR_MODEL_INVALID; }
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        owned = malloc(n > 0 ? (size_t)n : 1);
        len = owned ? fread(owned, 1, (size_t)n, f) : 0;
        fclose(f);
        data = owned;
    }
    if (!data || len < 11 || strncmp(data, "RKNN-SHIM 1", 11) != 0) {
        const char *spec = getenv("RKNN_SHIM_SPEC");
        char spec_path[4096];
        struct stat st;
        if (spec && *spec && stat(spec, &st) == 0 && S_ISDIR(st.st_mode)) { /* a folder: <fnv1a64>.spec */
            snprintf(spec_path, sizeof(spec_path), "%s/%016llx.spec", spec, (unsigned long long)fnv1a64(data, len));
            spec = spec_path;
        }
        free(owned);
        owned = NULL;
        if (!spec || !*spec) {
            fprintf(stderr, "E RKNN: rknn shim: the model is not an RKNN-SHIM model and $RKNN_SHIM_SPEC is unset "
                            "(this librknnrt.so is the rkdeploy test shim, not Rockchip's runtime)\n");
            return RKNN_ERR_MODEL_INVALID;
        }
        FILE *f = fopen(spec, "rb");
        if (!f) { fprintf(stderr, "E RKNN: rknn shim: cannot open $RKNN_SHIM_SPEC %s\n", spec); return RKNN_ERR_MODEL_INVALID; }
        owned = calloc(1, 65536);
        len = owned ? fread(owned, 1, 65535, f) : 0;
        fclose(f);
        data = owned;
    }
    int rc = parse_spec(ctx, data, len, err, sizeof(err));
    free(owned);
    if (rc != 0) {
        fprintf(stderr, "E RKNN: rknn shim: invalid model: %s\n", err);
        return RKNN_ERR_MODEL_INVALID;
    }
    return RKNN_SUCC;
}

int rknn_init(rknn_context *context, void *model, uint32_t size, uint32_t flag, rknn_init_extend *extend) {
    (void)extend;
    if (!context || !model) return RKNN_ERR_PARAM_INVALID;
    shim_ctx *ctx = calloc(1, sizeof(shim_ctx));
    if (!ctx) return -4;
    ctx->magic = SHIM_MAGIC;
    int rc = load_model(ctx, model, size);
    char chip[32];
    board_chip(chip, sizeof(chip));
    if (rc == RKNN_SUCC && chip[0] && ctx->target[0] && strcmp(chip, ctx->target) != 0) {
        fprintf(stderr, "E RKNN: The model target platform %s is not matched with the current platform %s\n",
                ctx->target, chip);
        rc = RKNN_ERR_TARGET_PLATFORM_UNMATCH;
    }
    echo("\"call\": \"rknn_init\", \"size\": %u, \"flag\": %u, \"target\": \"%s\", \"chip\": \"%s\", \"ret\": %d",
         size, flag, ctx->target, chip, rc);
    if (rc != RKNN_SUCC) {
        free(ctx);
        *context = 0;
        return rc;
    }
    *context = (rknn_context)(uintptr_t)ctx;
    return RKNN_SUCC;
}

int rknn_dup_context(rknn_context *in, rknn_context *out) {
    shim_ctx *src = in ? get_ctx(*in) : NULL;
    if (!src || !out) return RKNN_ERR_CTX_INVALID;
    shim_ctx *ctx = calloc(1, sizeof(shim_ctx));
    if (!ctx) return -4;
    memcpy(ctx, src, sizeof(*ctx));
    ctx->in_data = NULL;
    memset(ctx->out_bufs, 0, sizeof(ctx->out_bufs));
    ctx->inputs_set = ctx->ran = 0;
    *out = (rknn_context)(uintptr_t)ctx;
    return RKNN_SUCC;
}

int rknn_destroy(rknn_context context) {
    shim_ctx *ctx = get_ctx(context);
    echo("\"call\": \"rknn_destroy\", \"ret\": %d", ctx ? 0 : RKNN_ERR_CTX_INVALID);
    if (!ctx) return RKNN_ERR_CTX_INVALID;
    for (int i = 0; i < SHIM_MAX_IO; i++) free(ctx->out_bufs[i]);
    free(ctx->in_data);
    ctx->magic = 0;
    free(ctx);
    return RKNN_SUCC;
}

static void fill_attr(const shim_tensor *t, uint32_t index, int is_out, rknn_tensor_attr *a) {
    memset(a, 0, sizeof(*a));
    a->index = index;
    a->n_dims = t->n_dims;
    memcpy(a->dims, t->dims, sizeof(a->dims));
    snprintf(a->name, sizeof(a->name), "%s", t->name);
    a->n_elems = t->n_elems;
    /* A w8a8 model's float outputs are int8 on the NPU (affine), converted when want_float is set. */
    int native = (is_out && t->type == T_FLOAT32) ? T_INT8 : t->type;
    a->type = native;
    a->size = t->n_elems * (uint32_t)type_size(native);
    a->size_with_stride = a->size;
    a->fmt = t->n_dims == 4 ? FMT_NCHW : FMT_UNDEFINED;
    a->qnt_type = native == T_INT8 && is_out ? QNT_AFFINE : QNT_NONE;
    a->scale = native == T_INT8 && is_out ? 1.0f / 127.0f : 1.0f;
}

int rknn_query(rknn_context context, int cmd, void *info, uint32_t size) {
    shim_ctx *ctx = get_ctx(context);
    int rc = RKNN_SUCC;
    if (!ctx) rc = RKNN_ERR_CTX_INVALID;
    else if (!info) rc = RKNN_ERR_PARAM_INVALID;
    else switch (cmd) {
    case Q_IN_OUT_NUM:
        if (size < sizeof(rknn_input_output_num)) { rc = RKNN_ERR_PARAM_INVALID; break; }
        ((rknn_input_output_num *)info)->n_input = ctx->n_in;
        ((rknn_input_output_num *)info)->n_output = ctx->n_out;
        break;
    case Q_INPUT_ATTR: case Q_OUTPUT_ATTR: case Q_NATIVE_INPUT_ATTR: case Q_NATIVE_OUTPUT_ATTR:
    case Q_NATIVE_NHWC_INPUT_ATTR: case Q_NATIVE_NHWC_OUTPUT_ATTR:
    case Q_CURRENT_INPUT_ATTR: case Q_CURRENT_OUTPUT_ATTR:
    case Q_CURRENT_NATIVE_INPUT_ATTR: case Q_CURRENT_NATIVE_OUTPUT_ATTR: {
        int is_out = cmd == Q_OUTPUT_ATTR || cmd == Q_NATIVE_OUTPUT_ATTR || cmd == Q_NATIVE_NHWC_OUTPUT_ATTR
                     || cmd == Q_CURRENT_OUTPUT_ATTR || cmd == Q_CURRENT_NATIVE_OUTPUT_ATTR;
        rknn_tensor_attr *a = info;
        uint32_t idx = a->index;
        if (size < sizeof(rknn_tensor_attr) || idx >= (is_out ? ctx->n_out : ctx->n_in)) { rc = RKNN_ERR_PARAM_INVALID; break; }
        fill_attr(is_out ? &ctx->out[idx] : &ctx->in[idx], idx, is_out, a);
        break;
    }
    case Q_PERF_RUN:
        if (size < sizeof(rknn_perf_run) || !ctx->ran) { rc = RKNN_ERR_FAIL; break; }
        ((rknn_perf_run *)info)->run_duration = ctx->last_run_us;
        break;
    case Q_PERF_DETAIL: {
        static char detail[] = "rkdeploy rknn shim: no per-layer profile (no NPU)\n";
        if (size < sizeof(rknn_perf_detail)) { rc = RKNN_ERR_PARAM_INVALID; break; }
        ((rknn_perf_detail *)info)->perf_data = detail;
        ((rknn_perf_detail *)info)->data_len = sizeof(detail) - 1;
        break;
    }
    case Q_SDK_VERSION:
        if (size < sizeof(rknn_sdk_version)) { rc = RKNN_ERR_PARAM_INVALID; break; }
        snprintf(((rknn_sdk_version *)info)->api_version, 256, "%s (rkdeploy shim)", SHIM_VERSION);
        snprintf(((rknn_sdk_version *)info)->drv_version, 256, "0.9.8");
        break;
    case Q_MEM_SIZE: {
        if (size < sizeof(rknn_mem_size)) { rc = RKNN_ERR_PARAM_INVALID; break; }
        rknn_mem_size *m = info;
        memset(m, 0, sizeof(*m));
        for (uint32_t i = 0; i < ctx->n_out; i++) m->total_internal_size += ctx->out[i].n_elems;
        m->total_dma_allocated_size = m->total_internal_size;
        break;
    }
    case Q_CUSTOM_STRING:
        if (size < sizeof(rknn_custom_string)) { rc = RKNN_ERR_PARAM_INVALID; break; }
        memset(info, 0, sizeof(rknn_custom_string));
        break;
    default: /* dynamic-shape ranges, device memory info: a static model without them */
        rc = RKNN_ERR_FAIL;
    }
    echo("\"call\": \"rknn_query\", \"cmd\": %d, \"size\": %u, \"ret\": %d", cmd, size, rc);
    return rc;
}

int rknn_set_core_mask(rknn_context context, int core_mask) {
    shim_ctx *ctx = get_ctx(context);
    int rc = RKNN_SUCC;
    if (!ctx) rc = RKNN_ERR_CTX_INVALID;
    else if (core_mask == 0 || core_mask == 0xffff) rc = RKNN_SUCC;
    else if (core_mask != 1 && core_mask != 2 && core_mask != 4 && core_mask != 3 && core_mask != 7) rc = RKNN_ERR_PARAM_INVALID;
    else if (ctx->npu_cores < 3 && (core_mask >> ctx->npu_cores)) rc = RKNN_ERR_PARAM_INVALID;
    if (rc == RKNN_SUCC) ctx->core_mask = (uint32_t)core_mask;
    echo("\"call\": \"rknn_set_core_mask\", \"core_mask\": %d, \"ret\": %d", core_mask, rc);
    return rc;
}

int rknn_set_batch_core_num(rknn_context context, int core_num) {
    return get_ctx(context) && core_num >= 1 && core_num <= 3 ? RKNN_SUCC : RKNN_ERR_PARAM_INVALID;
}

static double read_value(const void *buf, int type, size_t i) {
    switch (type) {
    case T_FLOAT32: return ((const float *)buf)[i];
    case T_INT64: return (double)((const int64_t *)buf)[i];
    case T_INT32: return ((const int32_t *)buf)[i];
    case T_UINT32: return ((const uint32_t *)buf)[i];
    case T_INT16: return ((const int16_t *)buf)[i];
    case T_UINT16: return ((const uint16_t *)buf)[i];
    case T_INT8: return ((const int8_t *)buf)[i];
    case T_UINT8: case T_BOOL: return ((const uint8_t *)buf)[i];
    default: return 0.0;
    }
}

int rknn_inputs_set(rknn_context context, uint32_t n_inputs, rknn_input inputs[]) {
    shim_ctx *ctx = get_ctx(context);
    int rc = RKNN_SUCC;
    char bad[160] = "";
    if (!ctx) rc = RKNN_ERR_CTX_INVALID;
    else if (!inputs || n_inputs != ctx->n_in) {
        rc = RKNN_ERR_PARAM_INVALID;
        snprintf(bad, sizeof(bad), "%u inputs given, the model has %u", n_inputs, ctx->n_in);
    } else {
        for (uint32_t i = 0; i < n_inputs && rc == RKNN_SUCC; i++) {
            const rknn_input *in = &inputs[i];
            int ts = type_size(in->type);
            if (in->index >= ctx->n_in || !in->buf || ts == 0) {
                rc = RKNN_ERR_PARAM_INVALID;
                snprintf(bad, sizeof(bad), "input %u: bad index %u, buffer or type %d", i, in->index, in->type);
            } else if (!in->pass_through && in->size != ctx->in[in->index].n_elems * (uint32_t)ts) {
                rc = RKNN_ERR_PARAM_INVALID;
                snprintf(bad, sizeof(bad), "input %u (%.40s): %u bytes, want %u elements of type %d", in->index,
                         ctx->in[in->index].name, in->size, ctx->in[in->index].n_elems, in->type);
            } else if (in->index == 0) {
                uint32_t n = ctx->in[0].n_elems;
                float *copy = realloc(ctx->in_data, n * sizeof(float));
                if (!copy) { rc = -4; break; }
                for (uint32_t k = 0; k < n; k++) copy[k] = (float)read_value(in->buf, in->type, k);
                ctx->in_data = copy;
            }
        }
        if (rc == RKNN_SUCC) ctx->inputs_set = 1;
    }
    if (bad[0]) fprintf(stderr, "E RKNN: rknn_inputs_set: %s\n", bad);
    echo("\"call\": \"rknn_inputs_set\", \"n_inputs\": %u, \"type0\": %d, \"size0\": %u, \"ret\": %d", n_inputs,
         inputs && n_inputs ? inputs[0].type : -1, inputs && n_inputs ? inputs[0].size : 0, rc);
    return rc;
}

static void sleep_ms(double ms) {
    double deadline = now_ms() + ms;
    for (;;) {
        double left = deadline - now_ms();
        if (left <= 0) return;
        struct timespec ts = {(time_t)(left / 1e3), (long)(fmod(left, 1e3) * 1e6)};
        nanosleep(&ts, NULL);
    }
}

int rknn_run(rknn_context context, rknn_run_extend *extend) {
    shim_ctx *ctx = get_ctx(context);
    int rc = RKNN_SUCC;
    double t0 = now_ms(), ms = 0;
    if (!ctx) rc = RKNN_ERR_CTX_INVALID;
    else if (!ctx->inputs_set) rc = RKNN_ERR_INPUT_INVALID;
    else {
        const char *env = getenv("RKNN_SHIM_RUN_MS");
        ms = env && *env ? atof(env) : ctx->run_ms;
        sleep_ms(ms);
        ctx->last_run_us = (int64_t)((now_ms() - t0) * 1e3);
        ctx->ran = 1;
        if (extend) extend->frame_id++;
    }
    /* the shim's own CLOCK_MONOTONIC stamps of this call, for fidelity checks of the runner's latency */
    echo("\"call\": \"rknn_run\", \"run_ms\": %.3f, \"core_mask\": %u, \"ret\": %d, \"t_enter_ms\": %.6f, "
         "\"t_exit_ms\": %.6f", ms, ctx ? ctx->core_mask : 0, rc, t0, now_ms());
    return rc;
}

int rknn_wait(rknn_context context, rknn_run_extend *extend) {
    (void)extend;
    return get_ctx(context) ? RKNN_SUCC : RKNN_ERR_CTX_INVALID;
}

int rknn_outputs_get(rknn_context context, uint32_t n_outputs, rknn_output outputs[], rknn_output_extend *extend) {
    shim_ctx *ctx = get_ctx(context);
    int rc = RKNN_SUCC;
    if (!ctx) rc = RKNN_ERR_CTX_INVALID;
    else if (!ctx->ran) rc = RKNN_ERR_FAIL;
    else if (!outputs || n_outputs > ctx->n_out) rc = RKNN_ERR_PARAM_INVALID;
    for (uint32_t i = 0; rc == RKNN_SUCC && i < n_outputs; i++) {
        rknn_output *o = &outputs[i];
        if (o->index >= ctx->n_out) { rc = RKNN_ERR_OUTPUT_INVALID; break; }
        const shim_tensor *t = &ctx->out[o->index];
        uint32_t per = o->want_float ? 4 : 1;
        uint32_t need = t->n_elems * per;
        void *buf = o->buf;
        if (o->is_prealloc) {
            if (!buf || o->size < need) { rc = RKNN_ERR_OUTPUT_INVALID; break; }
        } else {
            free(ctx->out_bufs[o->index]);
            buf = ctx->out_bufs[o->index] = malloc(need);
            if (!buf) { rc = -4; break; }
            o->buf = buf;
            o->size = need;
        }
        uint32_t hidden = t->dims[t->n_dims - 1];
        uint32_t n_in = ctx->in[0].n_elems;
        for (uint32_t k = 0; k < t->n_elems; k++) {
            uint32_t pos = hidden ? k / hidden : 0, h = hidden ? k % hidden : 0;
            float x = ctx->in_data && pos < n_in ? ((float *)ctx->in_data)[pos] : 0.0f;
            float v = sinf(x * (1.0f + (float)h));
            if (o->want_float) ((float *)buf)[k] = v;
            else ((int8_t *)buf)[k] = (int8_t)lrintf(v * 127.0f);
        }
    }
    if (extend && ctx) extend->frame_id = 0;
    echo("\"call\": \"rknn_outputs_get\", \"n_outputs\": %u, \"want_float\": %d, \"is_prealloc\": %d, \"ret\": %d",
         n_outputs, outputs && n_outputs ? outputs[0].want_float : -1, outputs && n_outputs ? outputs[0].is_prealloc : -1, rc);
    return rc;
}

int rknn_outputs_release(rknn_context context, uint32_t n_outputs, rknn_output outputs[]) {
    shim_ctx *ctx = get_ctx(context);
    int rc = ctx ? RKNN_SUCC : RKNN_ERR_CTX_INVALID;
    for (uint32_t i = 0; ctx && outputs && i < n_outputs; i++) {
        rknn_output *o = &outputs[i];
        if (!o->is_prealloc && o->index < SHIM_MAX_IO && o->buf == ctx->out_bufs[o->index]) {
            free(ctx->out_bufs[o->index]);
            ctx->out_bufs[o->index] = NULL;
            o->buf = NULL;
        }
    }
    echo("\"call\": \"rknn_outputs_release\", \"n_outputs\": %u, \"ret\": %d", n_outputs, rc);
    return rc;
}

int rknn_set_input_shapes(rknn_context context, uint32_t n_inputs, rknn_tensor_attr attr[]) {
    (void)n_inputs; (void)attr;
    echo("\"call\": \"rknn_set_input_shapes\", \"ret\": %d", RKNN_ERR_FAIL);
    return get_ctx(context) ? RKNN_ERR_FAIL : RKNN_ERR_CTX_INVALID; /* static-shape models only */
}
