/* The runtime-independent half of the native CordsNet clients: manifest, image, decision rule,
 * command line, protocol loop and result. See cordsnet_client.h. */
#define _POSIX_C_SOURCE 200809L

#include "cordsnet_client.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

#define MAX_MANIFEST_BYTES (256L << 20) /* cordsnet.artifact._load_manifest_json's bound */
#define MAX_DEPTH 32

/* ------------------------------------------------------------------------------------ helpers */
void cn_fail(char *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, CN_ERR, fmt, ap);
    va_end(ap);
    cn_one_line(err);
}

void cn_one_line(char *text) {
    for (char *p = text; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
}

double cn_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *out = malloc(n);
    if (out) memcpy(out, s, n);
    return out;
}

/* dir of `path` + "/" + name (name alone when path has no directory). */
static char *beside(const char *path, const char *name) {
    const char *slash = strrchr(path, '/');
    size_t dir = slash ? (size_t)(slash - path + 1) : 0;
    char *out = malloc(dir + strlen(name) + 1);
    if (!out) return NULL;
    memcpy(out, path, dir);
    strcpy(out + dir, name);
    return out;
}

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* A regular, non-empty file (else one line naming `what`). */
static int check_file(const char *what, const char *path, char *err) {
    struct stat st;
    if (stat(path, &st) != 0) {
        cn_fail(err, "%s: no such file '%s'", what, path);
        return -1;
    }
    if (S_ISDIR(st.st_mode)) {
        cn_fail(err, "%s: expected a file, got the directory '%s'", what, path);
        return -1;
    }
    if (st.st_size == 0) {
        cn_fail(err, "%s: '%s' is empty", what, path);
        return -1;
    }
    return 0;
}

/* sha256 of a file as 64 lowercase hex digits, and its size. */
static int file_sha256(const char *path, char hex[65], long long *size, char *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        cn_fail(err, "model: cannot read '%s' (%s)", path, strerror(errno));
        return -1;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char buf[1 << 16], digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    size_t n;
    long long total = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    while (ok && (n = fread(buf, 1, sizeof buf, f)) > 0) {
        ok = EVP_DigestUpdate(ctx, buf, n);
        total += (long long)n;
    }
    ok = ok && !ferror(f) && EVP_DigestFinal_ex(ctx, digest, &len);
    EVP_MD_CTX_free(ctx);
    fclose(f);
    if (!ok) {
        cn_fail(err, "model: cannot hash '%s'", path);
        return -1;
    }
    for (unsigned int i = 0; i < len; i++) snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    hex[64] = '\0';
    *size = total;
    return 0;
}

/* `count` little-endian float32 values from `bytes` into `values`, whatever the host's byte order. Returns
 * the index of the first value that is NaN or infinite, or -1 when all are finite. */
static long decode_le_f32(const unsigned char *bytes, size_t count, float *values) {
    for (size_t i = 0; i < count; i++) {
        const unsigned char *b = bytes + 4 * i;
        uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        memcpy(values + i, &u, 4);
        if (!isfinite(values[i])) return (long)i;
    }
    return -1;
}

/* base64 -> exactly `count` little-endian float32 values (allocated). */
static int decode_floats(const char *what, const char *text, size_t count, float **out, char *err) {
    size_t len = strlen(text);
    if (len % 4 != 0 || len / 4 * 3 < count * 4) {
        cn_fail(err, "manifest: %s: expected base64 of %zu float32 values, got %zu characters", what, count, len);
        return -1;
    }
    unsigned char *bytes = malloc(len / 4 * 3 + 1);
    float *values = malloc(count * sizeof(float) + 1);
    if (!bytes || !values) {
        free(bytes);
        free(values);
        cn_fail(err, "manifest: %s: out of memory", what);
        return -1;
    }
    int decoded = EVP_DecodeBlock(bytes, (const unsigned char *)text, (int)len);
    size_t pad = (len >= 1 && text[len - 1] == '=') + (len >= 2 && text[len - 2] == '=');
    if (decoded < 0 || (size_t)decoded - pad != count * 4) {
        free(bytes);
        free(values);
        cn_fail(err, "manifest: %s: expected base64 of %zu float32 values (%zu bytes), got %s", what, count,
                count * 4, decoded < 0 ? "invalid base64" : "another length");
        return -1;
    }
    if (decode_le_f32(bytes, count, values) >= 0) {
        free(bytes);
        free(values);
        cn_fail(err, "manifest: %s holds NaN or infinity (a corrupt manifest: export again)", what);
        return -1;
    }
    free(bytes);
    *out = values;
    return 0;
}

/* ------------------------------------------------------------------------------------ manifest */
/* The graph kinds this program drives (cordsnet.artifact.GRAPH_KINDS, session "step", one step per call):
 * the inputs before the state, and the companion graph that computes them from the image. */
typedef struct {
    const char *name;
    const char *drive[2];
    int n_drive;
    const char *companion; /* role, or NULL */
} graph_kind;

static const graph_kind GRAPH_KINDS[] = {
    {"stepwise", {"image"}, 1, NULL},
    {"stepwise-drive", {"skip", "ff0"}, 2, "encode"},
};
#define N_KINDS (sizeof GRAPH_KINDS / sizeof GRAPH_KINDS[0])

static const cJSON *field(const cJSON *obj, const char *key, const char *where, char *err) {
    const cJSON *v = cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    if (!v) cn_fail(err, "manifest: lacks '%s%s'", where, key);
    return v;
}

static int get_int(const cJSON *obj, const char *key, const char *where, int min, int max, int *out, char *err) {
    const cJSON *v = field(obj, key, where, err);
    if (!v) return -1;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < min ||
        v->valuedouble > max) {
        char *text = cJSON_PrintUnformatted(v);
        cn_fail(err, "manifest: %s%s: expected an integer in [%d, %d], got %.80s", where, key, min, max,
                text ? text : "?");
        free(text);
        return -1;
    }
    *out = (int)v->valuedouble;
    return 0;
}

static int get_number(const cJSON *obj, const char *key, const char *where, double *out, char *err) {
    const cJSON *v = field(obj, key, where, err);
    if (!v) return -1;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        cn_fail(err, "manifest: %s%s: expected a number", where, key);
        return -1;
    }
    *out = v->valuedouble;
    return 0;
}

static const char *get_string(const cJSON *obj, const char *key, const char *where, char *err) {
    const cJSON *v = field(obj, key, where, err);
    if (!v) return NULL;
    if (!cJSON_IsString(v)) {
        cn_fail(err, "manifest: %s%s: expected a string", where, key);
        return NULL;
    }
    return v->valuestring;
}

/* An inputs/outputs table: [{"name", "shape", "dtype"}]; every dtype float32 (what this program feeds). */
static int read_io(const cJSON *root, const char *key, cn_io **out, int *count, char *err) {
    const cJSON *list = field(root, key, "", err);
    if (!list) return -1;
    if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) < 1 || cJSON_GetArraySize(list) > 2 + MAX_DEPTH) {
        cn_fail(err, "manifest: %s: expected a list of {name, shape, dtype}", key);
        return -1;
    }
    int n = cJSON_GetArraySize(list);
    cn_io *io = calloc((size_t)n, sizeof *io);
    if (!io) {
        cn_fail(err, "manifest: out of memory");
        return -1;
    }
    *out = io;
    *count = n;
    for (int i = 0; i < n; i++) {
        const cJSON *e = cJSON_GetArrayItem(list, i);
        char where[64];
        snprintf(where, sizeof where, "%s[%d].", key, i);
        const char *name = get_string(e, "name", where, err), *dtype = get_string(e, "dtype", where, err);
        const cJSON *shape = field(e, "shape", where, err);
        if (!name || !dtype || !shape) return -1;
        if (!(io[i].name = dup_str(name))) {
            cn_fail(err, "manifest: out of memory");
            return -1;
        }
        if (strcmp(dtype, "float32") != 0) {
            cn_fail(err, "manifest: %s '%s' is %s; this program feeds float32 (export with --dtype float32, or "
                    "bfloat16 or int8, whose inputs and outputs are float32)", key, name, dtype);
            return -1;
        }
        int rank = cJSON_IsArray(shape) ? cJSON_GetArraySize(shape) : -1;
        if (rank < 1 || rank > CN_MAX_RANK) {
            cn_fail(err, "manifest: %sshape: expected a list of dimensions", where);
            return -1;
        }
        io[i].rank = rank;
        for (int d = 0; d < rank; d++) {
            const cJSON *dim = cJSON_GetArrayItem(shape, d);
            if (d == 0 && cJSON_IsString(dim) && strcmp(dim->valuestring, "batch") == 0) {
                io[i].shape[d] = -1;
            } else if (cJSON_IsNumber(dim) && dim->valuedouble == floor(dim->valuedouble) && dim->valuedouble >= 1 &&
                       dim->valuedouble <= (double)(1 << 20)) {
                io[i].shape[d] = (int64_t)dim->valuedouble;
            } else {
                cn_fail(err, "manifest: %sshape[%d]: expected a size >= 1 (or \"batch\" first)", where, d);
                return -1;
            }
        }
    }
    return 0;
}

static int same_dims(const cn_io *io, const int64_t *dims, int rank) {
    if (io->rank != rank) return 0;
    for (int d = 1; d < rank; d++)
        if (io->shape[d] != dims[d]) return 0;
    return 1;
}

static int read_artifact(const cJSON *root, cn_manifest *m, const char *format, char *err) {
    const cJSON *art = field(root, "artifact", "", err);
    if (!art) return -1;
    const char *file = get_string(art, "file", "artifact.", err);
    const char *fmt = file ? get_string(art, "format", "artifact.", err) : NULL;
    const char *sha = fmt ? get_string(art, "sha256", "artifact.", err) : NULL;
    const cJSON *size = sha ? field(art, "size_bytes", "artifact.", err) : NULL;
    if (!size) return -1;
    if (strcmp(file, base_name(m->model_path)) != 0) {
        cn_fail(err, "manifest: '%s' belongs to '%s', not to '%s'", m->manifest_path, file,
                base_name(m->model_path));
        return -1;
    }
    if (strcmp(fmt, format) != 0) {
        cn_fail(err, "manifest: '%s' describes an artifact of format '%.40s'; this program runs '%s'",
                m->manifest_path, fmt, format);
        return -1;
    }
    char actual[65];
    long long bytes;
    if (file_sha256(m->model_path, actual, &bytes, err)) return -1;
    if (!cJSON_IsNumber(size) || size->valuedouble != (double)bytes || strcmp(sha, actual) != 0) {
        cn_fail(err, "manifest: '%s' belongs to another artifact: its sha256 %.12s... (%.0f bytes) does not match "
                "%s (sha256 %.12s..., %lld bytes); export again or delete the stale manifest", m->manifest_path, sha,
                cJSON_IsNumber(size) ? size->valuedouble : -1.0, base_name(m->model_path), actual, bytes);
        return -1;
    }
    m->format = dup_str(fmt);
    return m->format ? 0 : (cn_fail(err, "manifest: out of memory"), -1);
}

static int read_kind(const cJSON *root, cn_manifest *m, const graph_kind **kind, char *err) {
    const char *graph = get_string(root, "graph", "", err);
    if (!graph) return -1;
    for (size_t k = 0; k < N_KINDS; k++)
        if (strcmp(graph, GRAPH_KINDS[k].name) == 0) *kind = &GRAPH_KINDS[k];
    if (!*kind) {
        cn_fail(err, "model: '%s' is a '%.40s' graph; this program drives one Euler step per call: a 'stepwise' or "
                "'stepwise-drive' graph (cordsnet-cli export --graph stepwise)", m->model_path, graph);
        return -1;
    }
    m->graph = dup_str(graph);
    if (!(*kind)->companion) return m->graph ? 0 : -1;
    /* the companion that computes the drive inputs from the image, beside the artifact, with its sha256 */
    const cJSON *companions = field(root, "companions", "", err), *c;
    if (!companions) return -1;
    cJSON_ArrayForEach(c, companions) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(c, "role");
        if (!cJSON_IsString(role) || strcmp(role->valuestring, (*kind)->companion) != 0) continue;
        const char *file = get_string(c, "file", "companions[].", err);
        const char *sha = file ? get_string(c, "sha256", "companions[].", err) : NULL;
        if (!sha) return -1;
        if (strchr(file, '/')) {
            cn_fail(err, "manifest: companions[].file: expected a file name beside the manifest, got '%.80s'", file);
            return -1;
        }
        if (!(m->encode_path = beside(m->model_path, file))) return -1;
        char actual[65];
        long long bytes;
        if (check_file("model", m->encode_path, err)) {
            cn_fail(err, "model: a '%s' graph needs its %s graph beside it; '%s' does not exist", graph,
                    (*kind)->companion, m->encode_path);
            return -1;
        }
        if (file_sha256(m->encode_path, actual, &bytes, err)) return -1;
        if (strcmp(actual, sha) != 0) {
            cn_fail(err, "manifest: companion '%s' (%s) does not match its sha256 in the manifest; export again",
                    file, (*kind)->companion);
            return -1;
        }
        return 0;
    }
    cn_fail(err, "manifest: a '%s' graph lists its %s graph in 'companions'; none there", graph, (*kind)->companion);
    return -1;
}

/* inputs = drive inputs + state_0..D-1, outputs = logits + next_state_0..D-1 (cordsnet.artifact.io_names). */
static int check_io_names(cn_manifest *m, const graph_kind *kind, char *err) {
    int want_in = kind->n_drive + m->depth, want_out = 1 + m->depth;
    if (m->n_inputs != want_in || m->n_outputs != want_out) {
        cn_fail(err, "manifest: a '%s' graph of depth %d has %d inputs and %d outputs; the manifest lists %d and %d",
                m->graph, m->depth, want_in, want_out, m->n_inputs, m->n_outputs);
        return -1;
    }
    char name[32];
    for (int i = 0; i < want_in; i++) {
        if (i < kind->n_drive) snprintf(name, sizeof name, "%s", kind->drive[i]);
        else snprintf(name, sizeof name, "state_%d", i - kind->n_drive);
        if (strcmp(m->inputs[i].name, name) != 0) {
            cn_fail(err, "manifest: inputs[%d]: expected '%s' (a '%s' graph), got '%.40s'", i, name, m->graph,
                    m->inputs[i].name);
            return -1;
        }
    }
    for (int i = 0; i < want_out; i++) {
        if (i == 0) snprintf(name, sizeof name, "logits");
        else snprintf(name, sizeof name, "next_state_%d", i - 1);
        if (strcmp(m->outputs[i].name, name) != 0) {
            cn_fail(err, "manifest: outputs[%d]: expected '%s', got '%.40s'", i, name, m->outputs[i].name);
            return -1;
        }
    }
    int64_t image[4] = {0, m->in_channels, m->image_size, m->image_size}, logits[2] = {0, m->num_classes};
    if ((kind->n_drive == 1 && !same_dims(&m->inputs[0], image, 4)) || !same_dims(&m->outputs[0], logits, 2)) {
        cn_fail(err, "manifest: inputs/outputs: image or logits shape does not match config (in_channels %d, "
                "image_size %d, num_classes %d)", m->in_channels, m->image_size, m->num_classes);
        return -1;
    }
    for (int i = 0; i < m->n_inputs; i++) {
        int64_t b = m->inputs[i].shape[0];
        if (b != (m->batch ? m->batch : -1)) {
            cn_fail(err, "manifest: inputs[%d] '%s': batch dimension does not match 'batch' %d", i, m->inputs[i].name,
                    m->batch);
            return -1;
        }
    }
    return 0;
}

static int read_spontaneous(const cJSON *root, cn_manifest *m, char *err) {
    const cJSON *spont = field(root, "spontaneous_state", "", err);
    const char *enc = spont ? get_string(spont, "encoding", "spontaneous_state.", err) : NULL;
    const cJSON *areas = enc ? field(spont, "areas", "spontaneous_state.", err) : NULL;
    if (!areas) return -1;
    if (strcmp(enc, "base64-float32-le") != 0) {
        cn_fail(err, "manifest: spontaneous_state.encoding: expected 'base64-float32-le', got '%.40s'", enc);
        return -1;
    }
    if (!cJSON_IsArray(areas) || cJSON_GetArraySize(areas) != m->depth) {
        cn_fail(err, "manifest: spontaneous_state.areas: expected %d areas (config depth)", m->depth);
        return -1;
    }
    m->spontaneous = calloc((size_t)m->depth, sizeof *m->spontaneous);
    m->state_shape = calloc((size_t)m->depth, sizeof *m->state_shape);
    m->state_size = calloc((size_t)m->depth, sizeof *m->state_size);
    if (!m->spontaneous || !m->state_shape || !m->state_size) {
        cn_fail(err, "manifest: out of memory");
        return -1;
    }
    for (int i = 0; i < m->depth; i++) {
        const cJSON *area = cJSON_GetArrayItem(areas, i), *shape = field(area, "shape", "spontaneous_state.areas[].", err);
        const char *data = shape ? get_string(area, "data", "spontaneous_state.areas[].", err) : NULL;
        if (!data) return -1;
        const cn_io *input = &m->inputs[m->n_drive + i];
        size_t size = 1;
        int ok = cJSON_IsArray(shape) && cJSON_GetArraySize(shape) == 4;
        for (int d = 0; ok && d < 4; d++) {
            const cJSON *dim = cJSON_GetArrayItem(shape, d);
            ok = cJSON_IsNumber(dim) && dim->valuedouble == (d == 0 ? 1.0 : (double)input->shape[d]);
            m->state_shape[i][d] = ok ? (int64_t)dim->valuedouble : 0;
            size *= ok && d > 0 ? (size_t)input->shape[d] : 1;
        }
        if (!ok || input->rank != 4) {
            cn_fail(err, "manifest: spontaneous_state.areas[%d].shape: expected [1, c, h, w] like input '%s'", i,
                    input->name);
            return -1;
        }
        char what[64];
        snprintf(what, sizeof what, "spontaneous_state.areas[%d].data", i);
        m->state_size[i] = size;
        if (decode_floats(what, data, size, &m->spontaneous[i], err)) return -1;
    }
    return 0;
}

/* "decision": {"rule", "threshold", "margin", "baseline": {"encoding", "shape": [T, K], "data"}}. */
static int read_decision(const cJSON *root, cn_manifest *m, char *err) {
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decision");
    if (!cJSON_IsObject(dec)) {
        cn_fail(err, "manifest: '%s' has no 'decision' block (the no-image baseline the decision rule needs); "
                "export the model again with a cordsnet that writes it", m->manifest_path);
        return -1;
    }
    const char *rule = get_string(dec, "rule", "decision.", err);
    if (!rule) return -1;
    if (strcmp(rule, CN_DECISION_RULE) != 0) {
        cn_fail(err, "manifest: decision.rule: this program implements '%s', got '%.60s'", CN_DECISION_RULE, rule);
        return -1;
    }
    const cJSON *base = NULL, *shape;
    if (get_number(dec, "threshold", "decision.", &m->threshold, err) ||
        get_number(dec, "margin", "decision.", &m->margin, err) || !(base = field(dec, "baseline", "decision.", err)))
        return -1;
    const char *enc = get_string(base, "encoding", "decision.baseline.", err);
    const char *data = enc ? get_string(base, "data", "decision.baseline.", err) : NULL;
    if (!data || !(shape = field(base, "shape", "decision.baseline.", err))) return -1;
    if (strcmp(enc, "base64-float32-le") != 0) {
        cn_fail(err, "manifest: decision.baseline.encoding: expected 'base64-float32-le', got '%.40s'", enc);
        return -1;
    }
    const cJSON *t = cJSON_GetArrayItem(shape, 0), *k = cJSON_GetArrayItem(shape, 1);
    if (!cJSON_IsArray(shape) || cJSON_GetArraySize(shape) != 2 || !cJSON_IsNumber(t) || !cJSON_IsNumber(k) ||
        t->valuedouble != m->steps || k->valuedouble != m->num_classes) {
        cn_fail(err, "manifest: decision.baseline.shape: expected [%d, %d] (the protocol's steps, the model's "
                "classes)", m->steps, m->num_classes);
        return -1;
    }
    m->baseline_steps = (int)t->valuedouble;
    if (decode_floats("decision.baseline.data", data, (size_t)m->baseline_steps * (size_t)m->num_classes,
                      &m->baseline, err))
        return -1;
    if (cn_check_criterion(m->threshold, m->margin, m->num_classes, err)) {
        char inner[CN_ERR];
        snprintf(inner, sizeof inner, "%s", err);
        cn_fail(err, "manifest: decision: %s", inner);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------ metadata */
/* The graph's own `cordsnet.*` map, and the manifest checked against it field by field, as
 * cordsnet.artifact.manifest_disagreements does (which fields, how each is compared). */
#define PREFIX "cordsnet."
#define MAX_METADATA_BYTES (64L << 20) /* cordsnet.artifact.kinds.MAX_METADATA_BYTES */
#define MAX_METADATA_ENTRIES 4096
#define ONNX_METADATA_PROPS 14 /* ModelProto.metadata_props: repeated StringStringEntryProto {key = 1, value = 2} */

const char *cn_metadata_get(const cn_metadata *meta, const char *key) {
    for (int i = 0; i < meta->count; i++)
        if (strcmp(meta->keys[i], key) == 0) return meta->values[i];
    return NULL;
}

void cn_metadata_free(cn_metadata *meta) {
    for (int i = 0; i < meta->count; i++) {
        free(meta->keys[i]);
        free(meta->values[i]);
    }
    free(meta->keys);
    free(meta->values);
    memset(meta, 0, sizeof *meta);
}

/* Add (or, for a key seen before, replace: the last entry wins, as in Python's dict) key -> value. */
static int metadata_put(cn_metadata *meta, const char *key, size_t key_len, const char *value, size_t value_len) {
    char *k = malloc(key_len + 1), *v = malloc(value_len + 1);
    if (!k || !v) {
        free(k);
        free(v);
        return -1;
    }
    memcpy(k, key, key_len);
    k[key_len] = '\0';
    memcpy(v, value, value_len);
    v[value_len] = '\0';
    for (int i = 0; i < meta->count; i++) {
        if (strcmp(meta->keys[i], k) == 0) {
            free(k);
            free(meta->values[i]);
            meta->values[i] = v;
            return 0;
        }
    }
    char **keys = realloc(meta->keys, (size_t)(meta->count + 1) * sizeof *keys);
    if (keys) meta->keys = keys;
    char **values = keys ? realloc(meta->values, (size_t)(meta->count + 1) * sizeof *values) : NULL;
    if (values) meta->values = values;
    if (!keys || !values) {
        free(k);
        free(v);
        return -1;
    }
    meta->keys[meta->count] = k;
    meta->values[meta->count++] = v;
    return 0;
}

/* A protobuf reader over a file (f) or a buffer (buf), never past `end`. */
typedef struct {
    FILE *f;
    const unsigned char *buf;
    uint64_t pos, end;
} pb_reader;

static int pb_varint(pb_reader *r, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->pos >= r->end) return -1;
        int c = r->f ? fgetc(r->f) : r->buf[r->pos];
        if (c == EOF) return -1;
        r->pos++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1; /* more than 10 bytes */
}

static int pb_skip(pb_reader *r, uint64_t n) {
    if (n > r->end - r->pos) return -1;
    r->pos += n;
    return r->f ? fseeko(r->f, (off_t)r->pos, SEEK_SET) : 0;
}

/* The next field's number, wire type and, for a length-delimited one, its length; or a reason. */
static const char *pb_field(pb_reader *r, uint64_t *number, unsigned *wire, uint64_t *length) {
    uint64_t tag;
    if (pb_varint(r, &tag)) return "a truncated field tag";
    *number = tag >> 3;
    *wire = (unsigned)(tag & 7);
    if (*number == 0) return "field number 0";
    switch (*wire) {
    case 0:
        return pb_varint(r, length) ? "a truncated varint" : NULL;
    case 1:
        return pb_skip(r, 8) ? "a truncated fixed64" : NULL;
    case 5:
        return pb_skip(r, 4) ? "a truncated fixed32" : NULL;
    case 2:
        if (pb_varint(r, length)) return "a truncated length";
        return *length > r->end - r->pos ? "a field longer than the rest of the file" : NULL;
    default:
        return "a wire type ONNX does not use";
    }
}

/* One StringStringEntryProto of `n` bytes: its key and value (the last of each, as protobuf reads them). */
static const char *onnx_entry(const unsigned char *bytes, uint64_t n, cn_metadata *meta) {
    pb_reader r = {NULL, bytes, 0, n};
    const unsigned char *key = NULL, *value = NULL;
    uint64_t key_len = 0, value_len = 0, number, length;
    unsigned wire;
    while (r.pos < r.end) {
        const char *why = pb_field(&r, &number, &wire, &length);
        if (why) return why;
        if (wire != 2) continue;
        if (number == 1) key = bytes + r.pos, key_len = length;
        if (number == 2) value = bytes + r.pos, value_len = length;
        r.pos += length;
    }
    if (!key || key_len < strlen(PREFIX) || memcmp(key, PREFIX, strlen(PREFIX)) != 0) return NULL;
    if (memchr(key, '\0', key_len) || (value && memchr(value, '\0', value_len))) return "a NUL byte in a cordsnet key or value";
    if (meta->count >= MAX_METADATA_ENTRIES) return "more metadata entries than any export writes";
    return metadata_put(meta, (const char *)key, key_len, value ? (const char *)value : "", value_len)
               ? "out of memory" : NULL;
}

int cn_onnx_metadata(void *ctx, const char *path, cn_metadata *meta, char *err) {
    (void)ctx;
    memset(meta, 0, sizeof *meta);
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        if (f) fclose(f);
        cn_fail(err, "model: cannot read '%s' (%s)", path, f ? "not a regular file" : strerror(errno));
        return -1;
    }
    pb_reader r = {f, NULL, 0, (uint64_t)st.st_size};
    unsigned char *bytes = NULL;
    uint64_t number, length, total = 0;
    unsigned wire;
    const char *why = NULL;
    while (!why && r.pos < r.end) {
        why = pb_field(&r, &number, &wire, &length);
        if (why || wire != 2) continue;
        if (number != ONNX_METADATA_PROPS) {
            why = pb_skip(&r, length) ? "a truncated field" : NULL;
            continue;
        }
        total += length;
        if (total > (uint64_t)MAX_METADATA_BYTES) {
            why = "metadata larger than any export writes";
        } else if (!(bytes = malloc(length ? length : 1))) {
            why = "out of memory";
        } else if (fread(bytes, 1, length, f) != length) {
            why = "a truncated metadata entry";
        } else {
            r.pos += length;
            why = onnx_entry(bytes, length, meta);
        }
        free(bytes);
        bytes = NULL;
    }
    fclose(f);
    if (why) {
        cn_metadata_free(meta);
        cn_fail(err, "model: '%s' is not a readable ONNX file (truncated, corrupt or not ONNX): %s at byte %llu", path,
                why, (unsigned long long)r.pos);
        return -1;
    }
    return 0;
}

int cn_metadata_from_json(const char *text, size_t length, const char *path, cn_metadata *meta, char *err) {
    memset(meta, 0, sizeof *meta);
    cJSON *root = length <= (size_t)MAX_METADATA_BYTES ? cJSON_ParseWithLength(text, length) : NULL, *item;
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        cn_fail(err, "model: '%s' has malformed cordsnet metadata (expected a JSON object)", path);
        return -1;
    }
    int rc = 0;
    cJSON_ArrayForEach(item, root) {
        char *printed = cJSON_IsString(item) ? NULL : cJSON_PrintUnformatted(item);
        const char *value = cJSON_IsString(item) ? item->valuestring : printed;
        if (!value || metadata_put(meta, item->string, strlen(item->string), value, strlen(value))) rc = -1;
        free(printed);
        if (rc) break;
    }
    cJSON_Delete(root);
    if (rc) {
        cn_metadata_free(meta);
        cn_fail(err, "model: reading the metadata of '%s': out of memory", path);
    }
    return rc;
}

/* How a metadata value (text) is compared with the manifest's value (cordsnet.artifact.ArtifactInfo parses
 * both sides alike, then compares the parsed values). */
typedef enum {
    AS_TEXT,    /* a string */
    AS_NUMBER,  /* a number, exactly (the text parsed as a double) */
    AS_JSON,    /* JSON values, equal in value (objects in any key order) */
    AS_BATCH,   /* "dynamic" <-> null, else a number */
    AS_VERSION, /* a string, compared only when both are non-empty */
} compare_as;

/* The fields cordsnet.artifact.manifest_disagreements compares, in its order (the spontaneous state,
 * last, is compared by same_spontaneous), with where the manifest states each
 * (cordsnet.artifact.info._manifest_to_metadata) and the value either side stands for when absent. */
typedef struct {
    const char *name;              /* as Python reports it (the ArtifactInfo field) */
    const char *key;               /* the metadata key, without the prefix */
    const char *path[2];           /* the manifest's key (a member of the first when there are two) */
    compare_as as;
    const char *graph_default;     /* the value of an absent key (NULL: the graph must hold it) */
    const char *manifest_default;  /* JSON of an absent manifest value (NULL: the manifest must hold it) */
} compared_field;

static const compared_field COMPARED[] = {
    {"graph", "graph", {"graph"}, AS_TEXT, NULL, NULL},
    {"config", "config", {"config"}, AS_JSON, NULL, NULL},
    {"steps", "steps", {"protocol", "steps"}, AS_NUMBER, NULL, NULL},
    {"spontaneous_steps", "spontaneous_steps", {"protocol", "spontaneous_steps"}, AS_NUMBER, NULL, NULL},
    {"alpha", "alpha", {"protocol", "alpha"}, AS_NUMBER, NULL, NULL},
    {"readout", "readout", {"protocol", "readout"}, AS_TEXT, "last", NULL},
    {"record", "record", {"protocol", "record"}, AS_JSON, "[]", NULL},
    {"dtype", "dtype", {"dtype"}, AS_TEXT, "float32", NULL},
    {"batch", "batch", {"batch"}, AS_BATCH, NULL, NULL},
    {"steps_per_call", "steps_per_call", {"protocol", "steps_per_call"}, AS_NUMBER, "1", "1"},
    {"preset", "preset", {"preset"}, AS_JSON, "null", "null"},
    {"exporter", "exporter", {"exporter"}, AS_TEXT, "", "\"\""},
    {"checkpoint_sha256", "checkpoint_sha256", {"checkpoint_sha256"}, AS_TEXT, "", "\"\""},
    {"state_dict_sha256", "state_dict_sha256", {"state_dict_sha256"}, AS_TEXT, "", "\"\""},
    {"format_version", "format_version", {"format_version"}, AS_TEXT, NULL, NULL},
    {"version", "version", {"cordsnet_version"}, AS_VERSION, "", "\"\""},
};
#define N_COMPARED (sizeof COMPARED / sizeof COMPARED[0])

/* JSON values equal in value: numbers exactly, objects with the same keys in any order. */
static int same_json(const cJSON *a, const cJSON *b) {
    if (!a || !b) return a == b;
    if (cJSON_IsNumber(a) || cJSON_IsNumber(b)) return cJSON_IsNumber(a) && cJSON_IsNumber(b) && a->valuedouble == b->valuedouble;
    if ((a->type & 0xFF) != (b->type & 0xFF)) return 0;
    if (cJSON_IsString(a)) return strcmp(a->valuestring, b->valuestring) == 0;
    if (cJSON_IsArray(a) || cJSON_IsObject(a)) {
        if (cJSON_GetArraySize(a) != cJSON_GetArraySize(b)) return 0;
        const cJSON *x = a->child, *y = b->child;
        for (; x && y; x = x->next, y = y->next) {
            const cJSON *other = cJSON_IsObject(a) ? cJSON_GetObjectItemCaseSensitive(b, x->string) : y;
            if (!same_json(x, other)) return 0;
        }
        return 1;
    }
    return 1; /* null, true, false: the same type */
}

static int same_text(const char *text, const cJSON *value) {
    if (cJSON_IsString(value)) return strcmp(text, value->valuestring) == 0;
    char *printed = value ? cJSON_PrintUnformatted(value) : NULL; /* str() of a number, as Python reads it */
    int same = printed && strcmp(text, printed) == 0;
    free(printed);
    return same;
}

static int text_number(const char *text, double *out) {
    char *end;
    errno = 0;
    *out = strtod(text, &end);
    return *text && !*end && !errno;
}

/* Compare one field; -1 when the graph's own value is malformed (err set). */
static int same_field(const compared_field *c, const char *text, const cJSON *value, const char *model, char *err) {
    double number;
    cJSON *parsed;
    int same;
    switch (c->as) {
    case AS_TEXT:
        return same_text(text, value);
    case AS_VERSION:
        return !*text || (cJSON_IsString(value) && !*value->valuestring) || same_text(text, value);
    case AS_BATCH:
        if (strcmp(text, "dynamic") == 0) return cJSON_IsNull(value);
        /* fall through */
    case AS_NUMBER:
        if (!text_number(text, &number)) break;
        return cJSON_IsNumber(value) && value->valuedouble == number;
    case AS_JSON:
        if (!(parsed = cJSON_ParseWithLength(text, strlen(text)))) break;
        same = same_json(parsed, value);
        cJSON_Delete(parsed);
        return same;
    }
    char quoted[81]; /* the graph's bytes, quoted printable (a corrupt file's are anything) */
    size_t n = 0;
    for (; n < sizeof quoted - 1 && text[n]; n++) quoted[n] = text[n] >= 0x20 && text[n] <= 0x7e ? text[n] : '?';
    quoted[n] = '\0';
    cn_fail(err, "model: '%s' has a bad '" PREFIX "%s' = '%s'", model, c->key, quoted);
    return -1;
}

/* `count` values of `dtype` ("float32" or "float16", little-endian) from base64 as floats (allocated). */
static int decode_values(const char *text, const char *dtype, size_t count, float **out) {
    size_t width = strcmp(dtype, "float32") == 0 ? 4 : strcmp(dtype, "float16") == 0 ? 2 : 0, len = strlen(text);
    if (!width || len % 4 != 0 || len / 4 * 3 < count * width) return -1;
    unsigned char *bytes = malloc(len / 4 * 3 + 1);
    float *values = malloc(count * sizeof(float) + 1);
    int decoded = bytes && values ? EVP_DecodeBlock(bytes, (const unsigned char *)text, (int)len) : -1;
    size_t pad = (len >= 1 && text[len - 1] == '=') + (len >= 2 && text[len - 2] == '=');
    int ok = decoded >= 0 && (size_t)decoded - pad == count * width;
    for (size_t i = 0; ok && i < count; i++) {
        const unsigned char *b = bytes + width * i;
        if (width == 4) {
            uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
            memcpy(values + i, &u, 4);
        } else { /* IEEE half: sign, 5-bit exponent, 10-bit fraction */
            unsigned h = (unsigned)b[0] | (unsigned)b[1] << 8, e = (h >> 10) & 0x1f, frac = h & 0x3ff;
            float v = e == 0 ? ldexpf((float)frac, -24) : e == 31 ? (frac ? NAN : INFINITY)
                                                                  : ldexpf((float)(frac | 0x400), (int)e - 25);
            values[i] = h & 0x8000 ? -v : v;
        }
    }
    free(bytes);
    if (!ok) {
        free(values);
        return -1;
    }
    *out = values;
    return 0;
}

/* The spontaneous state: the same areas, shapes and float32 values (numpy's array_equal on float32). */
static int same_spontaneous(const cn_metadata *meta, const cJSON *root, const char *model, char *err) {
    const cJSON *spont = cJSON_GetObjectItemCaseSensitive(root, "spontaneous_state");
    const cJSON *areas = cJSON_GetObjectItemCaseSensitive(spont, "areas");
    const char *text = cn_metadata_get(meta, PREFIX "spontaneous_state");
    if (!cJSON_IsArray(areas)) return 0;
    if (!text) { /* cordsnet.artifact.info._spontaneous: zeros, when there is no spontaneous phase */
        const char *steps = cn_metadata_get(meta, PREFIX "spontaneous_steps");
        double n;
        if (!steps || !text_number(steps, &n) || n != 0) {
            cn_fail(err, "model: '%s' lacks the metadata key '" PREFIX "spontaneous_state'", model);
            return -1;
        }
    }
    cJSON *entries = text ? cJSON_ParseWithLength(text, strlen(text)) : NULL;
    if (text && !cJSON_IsArray(entries)) {
        cJSON_Delete(entries);
        cn_fail(err, "model: '%s' has a malformed '" PREFIX "spontaneous_state'", model);
        return -1;
    }
    int same = !entries || cJSON_GetArraySize(entries) == cJSON_GetArraySize(areas);
    for (int i = 0; same && i < cJSON_GetArraySize(areas); i++) {
        const cJSON *area = cJSON_GetArrayItem(areas, i), *entry = cJSON_GetArrayItem(entries, i);
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(area, "shape"), *data = cJSON_GetObjectItemCaseSensitive(area, "data");
        const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype"), *own = cJSON_GetObjectItemCaseSensitive(entry, "data");
        size_t count = 1;
        const cJSON *dim;
        cJSON_ArrayForEach(dim, shape) { /* at most MAX_METADATA_BYTES values: no product overflows */
            same = same && cJSON_IsNumber(dim) && dim->valuedouble >= 1 &&
                   (double)count * dim->valuedouble <= (double)MAX_METADATA_BYTES;
            count = same ? count * (size_t)dim->valuedouble : 1;
        }
        same = same && cJSON_IsArray(shape) && cJSON_IsString(data) &&
               (!entries || (same_json(shape, cJSON_GetObjectItemCaseSensitive(entry, "shape")) && cJSON_IsString(dtype) &&
                             cJSON_IsString(own)));
        float *a = NULL, *b = NULL;
        if (same && decode_values(data->valuestring, "float32", count, &a)) same = 0;
        if (same && entries && decode_values(own->valuestring, dtype->valuestring, count, &b)) same = 0;
        for (size_t k = 0; same && k < count; k++) same = a[k] == (b ? b[k] : 0.0f);
        free(a);
        free(b);
    }
    cJSON_Delete(entries);
    return same;
}

/* The fields where the manifest `root` says other than `meta`, joined by ", " into `names` (0 when none);
 * -1 when the graph holds no cordsnet metadata or a malformed value (err set). */
static int metadata_disagreements(const cJSON *root, const cn_metadata *meta, const char *model, char *names,
                                  size_t cap, char *err) {
    int count = 0;
    names[0] = '\0';
    if (!cn_metadata_get(meta, PREFIX "format_version")) {
        cn_fail(err, "model: '%s' is not a cordsnet export (no '" PREFIX "format_version' metadata); its manifest "
                "cannot be checked against it", model);
        return -1;
    }
    for (size_t i = 0; i <= N_COMPARED; i++) {
        int same;
        const char *name = i < N_COMPARED ? COMPARED[i].name : "spontaneous_state";
        if (i == N_COMPARED) {
            same = same_spontaneous(meta, root, model, err);
        } else {
            const compared_field *c = &COMPARED[i];
            char key[64];
            snprintf(key, sizeof key, PREFIX "%s", c->key);
            const char *text = cn_metadata_get(meta, key);
            if (!text && !(text = c->graph_default)) {
                cn_fail(err, "model: '%s' lacks the metadata key '%s'", model, key);
                return -1;
            }
            const cJSON *value = cJSON_GetObjectItemCaseSensitive(root, c->path[0]);
            if (c->path[1]) value = cJSON_GetObjectItemCaseSensitive(value, c->path[1]);
            cJSON *fallback = !value && c->manifest_default ? cJSON_Parse(c->manifest_default) : NULL;
            same = value || fallback ? same_field(c, text, value ? value : fallback, model, err) : 0;
            cJSON_Delete(fallback);
        }
        if (same < 0) return -1;
        if (!same) snprintf(names + strlen(names), cap - strlen(names), count++ ? ", %s" : "%s", name);
    }
    return count;
}

/* Refuse a manifest that says other than the graph's own metadata (cordsnet.artifact.check_manifest). */
static int check_metadata(const cJSON *root, const cn_manifest *m, cn_metadata_reader read_metadata, void *ctx,
                          char *err) {
    cn_metadata meta;
    char names[512];
    if (read_metadata(ctx, m->model_path, &meta, err)) return -1;
    int count = metadata_disagreements(root, &meta, m->model_path, names, sizeof names, err);
    cn_metadata_free(&meta);
    if (count > 0)
        cn_fail(err, "manifest: '%s' disagrees with the metadata inside %s on %s; the manifest was edited or belongs "
                "to another export: export again", m->manifest_path, base_name(m->model_path), names);
    return count ? -1 : 0;
}

static int read_json(const char *path, cJSON **out, char *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        cn_fail(err, "manifest: cannot read '%s' (%s); cordsnet-cli export writes it beside the model", path,
                strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_MANIFEST_BYTES) {
        fclose(f);
        cn_fail(err, "manifest: '%s' is not a manifest file (a directory, or more than 256 MiB)", path);
        return -1;
    }
    char *text = malloc((size_t)st.st_size + 1);
    size_t n = text ? fread(text, 1, (size_t)st.st_size, f) : 0;
    fclose(f);
    if (!text || n != (size_t)st.st_size) {
        free(text);
        cn_fail(err, "manifest: cannot read '%s'", path);
        return -1;
    }
    *out = cJSON_ParseWithLength(text, n);
    free(text);
    if (!*out || !cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        cn_fail(err, "manifest: '%s' is not a JSON object", path);
        return -1;
    }
    return 0;
}

int cn_manifest_read(const char *model, const char *manifest, const char *format, cn_metadata_reader read_metadata,
                     void *ctx, cn_manifest *m, char *err) {
    memset(m, 0, sizeof *m);
    if (check_file("MODEL", model, err)) return -1;
    m->model_path = dup_str(model);
    if (manifest) {
        m->manifest_path = dup_str(manifest);
    } else if ((m->manifest_path = malloc(strlen(model) + sizeof ".cordsnet.json"))) {
        sprintf(m->manifest_path, "%s.cordsnet.json", model);
    }
    if (!m->model_path || !m->manifest_path) {
        cn_fail(err, "manifest: out of memory");
        return -1;
    }
    cJSON *root = NULL;
    if (read_json(m->manifest_path, &root, err)) return -1;
    const graph_kind *kind = NULL;
    const cJSON *config = NULL, *protocol = NULL, *batch = NULL, *per_call;
    int version = 0, rc = -1;
    if (get_int(root, "cordsnet_manifest", "", 0, 1 << 30, &version, err)) goto done;
    if (version != 1) {
        cn_fail(err, "manifest: '%s' has cordsnet_manifest %d; this program reads 1", m->manifest_path, version);
        goto done;
    }
    if (read_artifact(root, m, format, err) || check_metadata(root, m, read_metadata, ctx, err) ||
        read_kind(root, m, &kind, err))
        goto done;
    if (!(config = field(root, "config", "", err)) || get_int(config, "depth", "config.", 1, MAX_DEPTH, &m->depth, err) ||
        get_int(config, "num_classes", "config.", 2, 1 << 20, &m->num_classes, err) ||
        get_int(config, "in_channels", "config.", 1, 1 << 10, &m->in_channels, err) ||
        get_int(config, "image_size", "config.", 1, 1 << 14, &m->image_size, err))
        goto done;
    if (!(protocol = field(root, "protocol", "", err)) ||
        get_int(protocol, "steps", "protocol.", 1, CN_MAX_STEPS, &m->steps, err))
        goto done;
    per_call = cJSON_GetObjectItemCaseSensitive(protocol, "steps_per_call");
    if (per_call && !(cJSON_IsNumber(per_call) && per_call->valuedouble == 1.0)) {
        cn_fail(err, "manifest: protocol.steps_per_call: this program shows one image per Euler step; expected 1");
        goto done;
    }
    if (!(batch = field(root, "batch", "", err))) goto done;
    if (!cJSON_IsNull(batch) && get_int(root, "batch", "", 1, 1 << 20, &m->batch, err)) goto done;
    m->n_drive = kind->n_drive;
    if (read_io(root, "inputs", &m->inputs, &m->n_inputs, err) ||
        read_io(root, "outputs", &m->outputs, &m->n_outputs, err) || check_io_names(m, kind, err) ||
        read_spontaneous(root, m, err) || read_decision(root, m, err))
        goto done;
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

void cn_manifest_free(cn_manifest *m) {
    for (int i = 0; m->inputs && i < m->n_inputs; i++) free(m->inputs[i].name);
    for (int i = 0; m->outputs && i < m->n_outputs; i++) free(m->outputs[i].name);
    for (int i = 0; m->spontaneous && i < m->depth; i++) free(m->spontaneous[i]);
    free(m->inputs);
    free(m->outputs);
    free(m->spontaneous);
    free(m->state_shape);
    free(m->state_size);
    free(m->baseline);
    free(m->model_path);
    free(m->manifest_path);
    free(m->format);
    free(m->graph);
    free(m->encode_path);
    memset(m, 0, sizeof *m);
}

int cn_batch(const cn_manifest *m) { return m->batch ? m->batch : 1; }

/* ----------------------------------------------------------------------------------------- .npy */
/* The value of `key` in a .npy header dict ({'descr': '<f4', 'fortran_order': False, 'shape': (1, 32, 32), }). */
static const char *npy_value(const char *header, const char *key) {
    char quoted[32];
    snprintf(quoted, sizeof quoted, "'%s':", key);
    const char *p = strstr(header, quoted);
    if (!p) return NULL;
    p += strlen(quoted);
    while (*p == ' ') p++;
    return p;
}

int cn_read_image(const char *path, const cn_manifest *m, float **pixels, char *err) {
    const int C = m->in_channels, S = m->image_size;
    if (check_file("IMAGE", path, err)) return -1;
    FILE *f = fopen(path, "rb");
    unsigned char pre[12];
    if (!f) {
        cn_fail(err, "IMAGE: cannot read '%s' (%s)", path, strerror(errno));
        return -1;
    }
    size_t got = fread(pre, 1, 10, f);
    if (got < 10 || memcmp(pre, "\x93NUMPY", 6) != 0 || pre[6] < 1 || pre[6] > 3) {
        fclose(f);
        cn_fail(err, "IMAGE: '%s' is not a .npy file (save one with numpy.save)", path);
        return -1;
    }
    size_t header_len = (size_t)pre[8] | (size_t)pre[9] << 8;
    if (pre[6] >= 2) { /* version 2 and 3: a 4-byte header length */
        if (fread(pre + 10, 1, 2, f) != 2) header_len = (size_t)-1;
        else header_len |= (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    }
    char *header = header_len <= 1 << 16 ? malloc(header_len + 1) : NULL;
    if (!header || fread(header, 1, header_len, f) != header_len) {
        free(header);
        fclose(f);
        cn_fail(err, "IMAGE: '%s' has a truncated or oversized .npy header", path);
        return -1;
    }
    header[header_len] = '\0';
    const char *descr = npy_value(header, "descr"), *order = npy_value(header, "fortran_order");
    const char *shape = npy_value(header, "shape");
    int rc = -1;
    long dims[8];
    int rank = 0;
    if (!descr || !order || !shape || *shape != '(') {
        cn_fail(err, "IMAGE: '%s' has a malformed .npy header", path);
        goto done;
    }
    if (strncmp(descr, "'<f4'", 5) != 0) {
        const char *end = strchr(descr + 1, '\'');
        cn_fail(err, "IMAGE: expected float32 pixels ('<f4'), got %.*s; save x.astype(numpy.float32)",
                end ? (int)(end - descr + 1) : 8, descr);
        goto done;
    }
    if (strncmp(order, "False", 5) != 0) {
        cn_fail(err, "IMAGE: expected a C-ordered array, got fortran_order True; save numpy.ascontiguousarray(x)");
        goto done;
    }
    for (const char *p = shape + 1; *p && *p != ')';) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || rank == 8) break;
        dims[rank++] = v;
        p = end;
        while (*p == ',' || *p == ' ') p++;
    }
    int offset = rank == 4 && dims[0] == 1 ? 1 : 0;
    if (rank - offset != 3 || dims[offset] != C || dims[offset + 1] != S || dims[offset + 2] != S) {
        char have[96] = "(";
        for (int d = 0; d < rank; d++)
            snprintf(have + strlen(have), sizeof have - strlen(have), d ? ", %ld" : "%ld", dims[d]);
        strncat(have, rank == 1 ? ",)" : ")", sizeof have - strlen(have) - 1);
        cn_fail(err, "IMAGE: expected one normalised image of shape (C, S, S) = (%d, %d, %d) or (1, %d, %d, %d), "
                "got %s", C, S, S, C, S, S, have);
        goto done;
    }
    size_t count = (size_t)C * S * S;
    unsigned char *bytes = malloc(count * 4 + 1);
    float *values = malloc(count * sizeof(float));
    if (!bytes || !values || fread(bytes, 1, count * 4 + 1, f) != count * 4) {
        free(bytes);
        free(values);
        cn_fail(err, "IMAGE: '%s' does not hold exactly %zu float32 values after its header", path, count);
        goto done;
    }
    long bad = decode_le_f32(bytes, count, values);
    if (bad >= 0) {
        free(bytes);
        free(values);
        cn_fail(err, "IMAGE: expected finite pixels, got NaN or infinity at index %ld", bad);
        goto done;
    }
    free(bytes);
    *pixels = values;
    rc = 0;
done:
    free(header);
    fclose(f);
    return rc;
}

/* ------------------------------------------------------------------------------------ decision */
int cn_check_criterion(double threshold, double margin, int num_classes, char *err) {
    if (!(threshold > 1.0 / num_classes && threshold <= 1.0)) {
        cn_fail(err, "threshold: expected a probability in (1/K, 1] = (%.6g, 1] for K = %d classes, got %.10g",
                1.0 / num_classes, num_classes, threshold);
        return -1;
    }
    if (!(margin > 0.0 && isfinite(margin))) {
        cn_fail(err, "margin: expected evidence in logits > 0, got %.10g", margin);
        return -1;
    }
    return 0;
}

/* lead(x, c) = x[c] - max_{k != c} x[k] (K >= 2), in float64 */
static double lead(const float *x, int num_classes, int c) {
    double rival = -INFINITY;
    for (int k = 0; k < num_classes; k++)
        if (k != c && (double)x[k] > rival) rival = x[k];
    return (double)x[c] - rival;
}

/* cordsnet.decision.decide for one image: c = argmax z (first maximum), p = 1 / sum_k exp(z_k - z_c),
 * evidence = lead(z, c) - lead(b, c); decided iff p >= threshold and evidence >= margin. */
void cn_decide(const float *z, const float *b, int num_classes, double threshold, double margin, cn_verdict *out) {
    int c = 0;
    for (int k = 1; k < num_classes; k++)
        if (z[k] > z[c]) c = k;
    double sum = 0.0;
    for (int k = 0; k < num_classes; k++) sum += exp((double)z[k] - (double)z[c]);
    out->cls = c;
    out->probability = 1.0 / sum;
    out->evidence = lead(z, num_classes, c) - lead(b, num_classes, c);
    out->decided = out->probability >= threshold && out->evidence >= margin;
}

/* -------------------------------------------------------------------------------- command line */
const char *cn_usage(void) {
    return "usage: cordsnet-classify MODEL IMAGE.npy [--steps N] [--threshold P] [--margin M] [--manifest PATH] "
           "[--warmup]";
}

static int parse_number(const char *name, const char *text, double *out, char *err) {
    char *end;
    errno = 0;
    *out = strtod(text, &end);
    if (!*text || *end || errno || !isfinite(*out)) {
        cn_fail(err, "%s: expected a number, got '%.40s'", name, text);
        return -1;
    }
    return 0;
}

int cn_parse_args(int argc, char **argv, cn_args *a, char *err) {
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = strcmp(arg, "--steps") == 0 || strcmp(arg, "--threshold") == 0 || strcmp(arg, "--margin") == 0 ||
                    strcmp(arg, "--manifest") == 0;
        if (takes && !value) {
            cn_fail(err, "%s: expected a value", arg);
            return -1;
        }
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            a->help = 1;
        } else if (strcmp(arg, "--warmup") == 0) {
            a->warmup = 1;
        } else if (strcmp(arg, "--steps") == 0) {
            char *end;
            errno = 0;
            long v = strtol(value, &end, 10);
            if (!*value || *end || errno || v < 1 || v > CN_MAX_STEPS) {
                cn_fail(err, "--steps: expected an integer in [1, %d], got '%.40s'", CN_MAX_STEPS, value);
                return -1;
            }
            a->steps = (int)v;
            i++;
        } else if (strcmp(arg, "--threshold") == 0) {
            if (parse_number("--threshold", value, &a->threshold, err)) return -1;
            a->has_threshold = 1;
            i++;
        } else if (strcmp(arg, "--margin") == 0) {
            if (parse_number("--margin", value, &a->margin, err)) return -1;
            a->has_margin = 1;
            i++;
        } else if (strcmp(arg, "--manifest") == 0) {
            a->manifest = value;
            i++;
        } else if (arg[0] == '-' && arg[1] != '\0') {
            cn_fail(err, "unknown option '%.40s' (valid: --steps --threshold --margin --manifest --warmup --help)", arg);
            return -1;
        } else if (!a->model) {
            a->model = arg;
        } else if (!a->image) {
            a->image = arg;
        } else {
            cn_fail(err, "unexpected argument '%.60s'; %s", arg, cn_usage());
            return -1;
        }
    }
    if (!a->help && (!a->model || !a->image)) {
        cn_fail(err, "expected MODEL and IMAGE.npy; %s", cn_usage());
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------ protocol */
int cn_plan(const cn_manifest *m, cn_args *a, char *err) {
    if (!a->steps) a->steps = m->steps;
    if (!a->has_threshold) a->threshold = m->threshold;
    if (!a->has_margin) a->margin = m->margin;
    a->has_threshold = a->has_margin = 1;
    if (cn_check_criterion(a->threshold, a->margin, m->num_classes, err)) {
        char inner[CN_ERR];
        snprintf(inner, sizeof inner, "--%s", err);
        snprintf(err, CN_ERR, "%s", inner);
        return -1;
    }
    /* The decision compares with the no-image logits at the same step, which the manifest holds for
     * steps 1..T only: a longer run is refused rather than reporting decisions it cannot make. */
    if (a->steps > m->baseline_steps) {
        cn_fail(err, "--steps: the manifest's decision baseline covers the protocol's %d steps (the rule needs the "
                "no-image logits at every step); got %d", m->baseline_steps, a->steps);
        return -1;
    }
    return 0;
}

int cn_run(const cn_manifest *m, const cn_args *a, const cn_stepper *s, cn_result *r, char *err) {
    const int K = m->num_classes;
    memset(r, 0, sizeof *r);
    r->steps = a->steps;
    r->decided_class = -1;
    if (!a->has_threshold || !a->has_margin || a->steps < 1) {
        cn_fail(err, "cn_run: call cn_plan first");
        return -1;
    }
    if (!(r->logits = malloc((size_t)K * sizeof(float)))) {
        cn_fail(err, "out of memory");
        return -1;
    }
    const float *z = NULL;
    if (a->warmup) { /* untimed: the first calls pay for kernel selection and memory */
        if (s->start(s->ctx, err)) return -1;
        for (int t = 0; t < r->steps; t++)
            if (s->step(s->ctx, &z, err)) return -1;
    }
    if (s->start(s->ctx, err)) return -1;
    double busy = 0.0;
    for (int t = 1; t <= r->steps; t++) {
        double t0 = cn_now_ms();
        if (s->step(s->ctx, &z, err)) return -1;
        busy += cn_now_ms() - t0;
        for (int k = 0; k < K; k++) {
            if (!isfinite(z[k])) {
                cn_fail(err, "logits: NaN or infinity after step %d", t);
                return -1;
            }
        }
        if (!r->decided_step) {
            cn_verdict v;
            cn_decide(z, m->baseline + (size_t)(t - 1) * K, K, a->threshold, a->margin, &v);
            if (v.decided) {
                r->decided_step = t;
                r->decided_class = v.cls;
                r->probability = v.probability;
                r->evidence = v.evidence;
            }
        }
    }
    memcpy(r->logits, z, (size_t)K * sizeof(float));
    r->ms_per_step = busy / r->steps;
    return 0;
}

int cn_print_result(const cn_manifest *m, const cn_result *r, const char *runtime) {
    cJSON *out = cJSON_CreateObject();
    cJSON *logits = cJSON_CreateFloatArray(r->logits, m->num_classes);
    if (!out || !logits) return -1;
    cJSON_AddItemToObject(out, "logits", logits);
    if (r->decided_step) {
        cJSON_AddNumberToObject(out, "decided_step", r->decided_step);
        cJSON_AddNumberToObject(out, "decided_class", r->decided_class);
        cJSON_AddNumberToObject(out, "probability", r->probability);
        cJSON_AddNumberToObject(out, "evidence", r->evidence);
    } else {
        cJSON_AddNullToObject(out, "decided_step");
        cJSON_AddNullToObject(out, "decided_class");
    }
    cJSON_AddNumberToObject(out, "ms_per_step", r->ms_per_step);
    cJSON_AddNumberToObject(out, "steps", r->steps);
    cJSON_AddStringToObject(out, "graph", m->graph);
    cJSON_AddStringToObject(out, "runtime", runtime);
    char *text = cJSON_PrintUnformatted(out);
    cJSON_Delete(out);
    if (!text) return -1;
    puts(text);
    free(text);
    return fflush(stdout);
}
