/* The runtime-independent half of the native CordsNet clients (C11; the C++ client links it too).
 *
 * A native client drives an exported stepwise graph one Euler step per call. Everything that does not
 * depend on the runtime lives here, written once for both programs:
 *
 *   - the client manifest `<artifact>.cordsnet.json` (schema: docs/export.md, "Client manifest";
 *     writer: cordsnet/artifact.py ArtifactInfo.to_manifest): the artifact's sha256 and size, the graph
 *     kind, the I/O names and shapes, the spontaneous state, the protocol's steps and the decision block;
 *     checked against the artifact's bytes and, field by field, against the `cordsnet.*` metadata the
 *     graph itself holds (cordsnet.artifact.manifest_disagreements: a manifest that lies is refused);
 *   - that metadata from an ONNX file (ModelProto.metadata_props, a bounded reader: cn_onnx_metadata) or
 *     from the JSON text a runtime returns (an ExecuTorch program's constant method: cn_metadata_from_json);
 *   - one normalised image from a .npy file (float32, (C, S, S) or (1, C, S, S), C order);
 *   - the decision rule "cordsnet.decision/1" (cordsnet/decision.py);
 *   - the command line, the protocol loop around a runtime's step function, and the JSON result.
 *
 * Errors: every function that can fail returns 0 on success, else -1 with one line in `err`
 * (at most CN_ERR bytes, no newline) that names the argument or manifest field, the value received
 * and what was expected.
 */
#ifndef CORDSNET_CLIENT_H
#define CORDSNET_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CN_ERR 512        /* size of an error buffer */
#define CN_MAX_RANK 8     /* most dimensions of an input/output the manifest may list */
#define CN_MAX_STEPS 10000 /* cordsnet.config.MAX_STEPS: the longest protocol an artifact claims */
#define CN_DECISION_RULE "cordsnet.decision/1"

/* One input or output of the graph as the manifest lists it. shape[0] is -1 for a dynamic batch. */
typedef struct {
    char *name;
    int rank;
    int64_t shape[CN_MAX_RANK];
} cn_io;

/* What a client needs from the manifest, checked. Arrays are owned (cn_manifest_free). */
typedef struct {
    char *model_path;      /* the artifact */
    char *manifest_path;
    char *format;          /* artifact.format: "onnx", "executorch" */
    char *graph;           /* "stepwise" or "stepwise-drive" */
    char *encode_path;     /* the encode companion beside the artifact (stepwise-drive), else NULL */
    int depth, num_classes, in_channels, image_size;
    int steps;             /* protocol.steps: the default number of stimulus steps */
    int batch;             /* the graph's fixed batch, or 0 for a dynamic one */
    int n_inputs, n_outputs;
    cn_io *inputs, *outputs;
    int n_drive;           /* the inputs before state_0: "image", or "skip" and "ff0" */
    float **spontaneous;   /* depth arrays: area i's state after the spontaneous phase, (1, c, h, w) */
    int64_t (*state_shape)[4];
    size_t *state_size;    /* c * h * w per area */
    double threshold, margin; /* the decision block's defaults */
    int baseline_steps;    /* T = protocol.steps: the baseline covers steps 1..T */
    float *baseline;       /* (T, K): logits after each step of a blank image from the spontaneous state */
} cn_manifest;

/* The graph's own `cordsnet.*` metadata: `count` keys (with the prefix) and their string values (owned). */
typedef struct {
    int count;
    char **keys, **values;
} cn_metadata;

/* Reads the metadata of the artifact at `path` into `meta` (0), or one line in `err` (-1). */
typedef int (*cn_metadata_reader)(void *ctx, const char *path, cn_metadata *meta, char *err);

/* The command line: MODEL IMAGE.npy [--steps N] [--threshold P] [--margin M] [--manifest PATH] [--warmup]. */
typedef struct {
    const char *model, *image, *manifest;
    int steps;              /* 0: the manifest's protocol.steps */
    double threshold, margin;
    int has_threshold, has_margin, warmup, help;
} cn_args;

/* The decision rule at one step. */
typedef struct {
    int decided;
    int cls;           /* the top class (first maximum) */
    double probability; /* its softmax probability */
    double evidence;   /* lead(z, c) - lead(b, c) */
} cn_verdict;

/* A runtime, as the protocol loop sees it (the programs implement these two). */
typedef struct {
    /* Start over: the spontaneous state, the image shown (encoded once for a stepwise-drive graph). */
    int (*start)(void *ctx, char *err);
    /* One Euler step, the state fed back; `logits` points at the K logits of image 0 after it. */
    int (*step)(void *ctx, const float **logits, char *err);
    void *ctx;
} cn_stepper;

typedef struct {
    int steps;
    float *logits;      /* K, after the last step */
    int decided_step;   /* 1-based, 0 if undecided */
    int decided_class;  /* -1 if undecided */
    double probability, evidence; /* at the decision */
    double ms_per_step; /* mean wall time of one step call */
} cn_result;

const char *cn_usage(void);
int cn_parse_args(int argc, char **argv, cn_args *args, char *err);

/* Read and check the manifest of `model` (`manifest`: its path, NULL for `<model>.cordsnet.json`),
 * which must belong to the file (name, size, sha256; likewise the encode companion), agree with the
 * metadata `read_metadata(ctx, model, ...)` reads from the graph itself on every field both hold
 * (cn_metadata_disagreements), and describe a float32 stepwise or stepwise-drive graph in `format`. */
int cn_manifest_read(const char *model, const char *manifest, const char *format, cn_metadata_reader read_metadata,
                     void *ctx, cn_manifest *m, char *err);
void cn_manifest_free(cn_manifest *m);

/* cn_metadata_reader of an ONNX file: the `cordsnet.*` entries of ModelProto.metadata_props (field 14),
 * read with every length checked against the file and MAX_METADATA_BYTES; nothing else is parsed. */
int cn_onnx_metadata(void *ctx, const char *path, cn_metadata *meta, char *err);
/* The map from a JSON object of `length` bytes (strings as they are, other values as JSON text), as
 * cordsnet.artifact.reading._read_pte builds it; `path` names the artifact in errors. */
int cn_metadata_from_json(const char *text, size_t length, const char *path, cn_metadata *meta, char *err);
const char *cn_metadata_get(const cn_metadata *meta, const char *key); /* the value, or NULL */
void cn_metadata_free(cn_metadata *meta);
int cn_batch(const cn_manifest *m); /* the batch the program runs: the fixed batch, else 1 */

/* One normalised image from a .npy file: C * S * S floats (caller frees). */
int cn_read_image(const char *path, const cn_manifest *m, float **pixels, char *err);

/* The criterion's arguments: threshold in (1/K, 1], margin > 0 (cordsnet.decision.check_criterion). */
int cn_check_criterion(double threshold, double margin, int num_classes, char *err);
void cn_decide(const float *logits, const float *baseline, int num_classes, double threshold, double margin,
               cn_verdict *out);

/* Resolve the run: the steps (default protocol.steps, at most the baseline's T), threshold and margin
 * (default the manifest's decision block), checked. Call before loading the runtime (fails fast). */
int cn_plan(const cn_manifest *m, cn_args *args, char *err);

/* Run the protocol (after cn_plan): `steps` steps from the spontaneous state (after one untimed run if args->warmup),
 * the decision at every step within the baseline. Fills `r` (r->logits: caller frees). */
int cn_run(const cn_manifest *m, const cn_args *args, const cn_stepper *stepper, cn_result *r, char *err);

/* The one JSON object on stdout. */
int cn_print_result(const cn_manifest *m, const cn_result *r, const char *runtime);

/* Helpers for the programs. */
void cn_fail(char *err, const char *fmt, ...);
void cn_one_line(char *text);       /* newlines and tabs to spaces, in place */
double cn_now_ms(void);

#ifdef __cplusplus
}
#endif
#endif
