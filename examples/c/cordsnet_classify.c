/* cordsnet-classify (C11, OpenVINO C API): drive an exported stepwise ONNX graph one Euler step at a time.
 *
 *   cordsnet-classify MODEL.onnx IMAGE.npy [--steps N] [--threshold P] [--margin M] [--manifest PATH] [--warmup]
 *
 * MODEL is a `stepwise` graph (inputs image, state_0..D-1; outputs logits, next_state_0..D-1) or a
 * `stepwise-drive` graph (inputs skip, ff0, state_*) with its encode graph beside it; its client manifest
 * `MODEL.cordsnet.json` supplies the spontaneous state, the protocol and the decision block
 * (cordsnet_client.c reads it, and refuses it unless it agrees with the graph's own metadata_props).
 * The state lives in OpenVINO tensors: two sets bound once to two infer
 * requests, request k reading set k and writing set 1 - k, so nothing is copied between steps (the
 * same scheme as cordsnet.runtime.openvino_backend.OpenVINOStepper). Prints one JSON object on stdout;
 * bad input is one line on stderr and exit status 1.
 */
#define _POSIX_C_SOURCE 200809L

#include <openvino/c/openvino.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cordsnet_client.h"

#define DEVICE "CPU"

typedef struct {
    const cn_manifest *m;
    const float *image; /* C * S * S, normalised */
    int batch;
    ov_core_t *core;
    ov_compiled_model_t *step_model, *encode_model;
    ov_infer_request_t *requests[2], *encode_request;
    ov_tensor_t **sets[2];  /* the state, depth tensors each */
    ov_tensor_t **drives;   /* the step graph's inputs before the state (image, or skip and ff0) */
    ov_tensor_t *logits, *encode_image;
    int cur;                /* the request (and state set) of the next step */
} runner;

static int ov_check(ov_status_e status, const char *what, char *err) {
    if (status == OK) return 0;
    const char *detail = ov_get_last_err_msg(); /* allocated: ov_free */
    cn_fail(err, "OpenVINO: %s: %s (%.300s)", what, ov_get_error_info(status), detail ? detail : "");
    if (detail) ov_free(detail);
    return -1;
}

static int new_tensor(int rank, const int64_t *dims, ov_tensor_t **out, char *err) {
    ov_shape_t shape;
    if (ov_check(ov_shape_create(rank, dims, &shape), "creating a shape", err)) return -1;
    int rc = ov_check(ov_tensor_create(F32, shape, out), "creating a tensor", err);
    ov_shape_free(&shape);
    return rc;
}

static float *data(const ov_tensor_t *t) {
    void *p = NULL;
    return ov_tensor_data(t, &p) == OK ? (float *)p : NULL;
}

/* Fill every row of a (batch, n) tensor with the same n values. */
static int fill_rows(ov_tensor_t *t, const float *values, size_t n, int batch, char *err) {
    float *p = data(t);
    if (!p) return ov_check(GENERAL_ERROR, "reading a tensor", err);
    for (int b = 0; b < batch; b++) memcpy(p + (size_t)b * n, values, n * sizeof(float));
    return 0;
}

/* ov_core_read_model, with stderr closed meanwhile: on a file that is not ONNX, OpenVINO tries each of its
 * frontends, and some log their parse errors straight to stderr (the error comes back as the status). */
static ov_status_e read_model_quietly(const ov_core_t *core, const char *path, ov_model_t **model) {
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    FILE *null = fopen("/dev/null", "w");
    if (saved >= 0 && null) dup2(fileno(null), STDERR_FILENO);
    ov_status_e status = ov_core_read_model(core, path, NULL, model);
    if (saved >= 0) {
        dup2(saved, STDERR_FILENO);
        close(saved);
    }
    if (null) fclose(null);
    return status;
}

/* Read `path`, check its inputs are `names` in order, fix every input to its shape at this batch and
 * compile it for the CPU in float32 (the graphs' precision; OpenVINO would otherwise pick bf16 on
 * CPUs that have it). */
static int compile(runner *r, const char *path, int n, const char *const *names, const cn_io *shapes,
                   ov_compiled_model_t **out, char *err) {
    ov_model_t *model = NULL;
    ov_partial_shape_t *partial = calloc((size_t)n, sizeof *partial);
    size_t count = 0;
    int made = 0, rc = -1;
    if (!partial) goto done;
    if (ov_check(read_model_quietly(r->core, path, &model), "reading the model", err) ||
        ov_check(ov_model_inputs_size(model, &count), "listing the inputs", err))
        goto done;
    if ((int)count != n) {
        cn_fail(err, "model: '%s' has %zu inputs; its manifest lists %d", path, count, n);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        ov_output_const_port_t *port = NULL;
        char *name = NULL;
        if (ov_check(ov_model_const_input_by_index(model, (size_t)i, &port), "reading an input", err)) goto done;
        ov_status_e st = ov_port_get_any_name(port, &name);
        ov_output_const_port_free(port);
        if (ov_check(st, "reading an input name", err)) goto done;
        int same = strcmp(name, names[i]) == 0;
        if (!same) cn_fail(err, "model: input %d of '%s' is '%.40s'; its manifest says '%s'", i, path, name, names[i]);
        ov_free(name);
        if (!same) goto done;
        int64_t dims[CN_MAX_RANK];
        for (int d = 0; d < shapes[i].rank; d++) dims[d] = d == 0 ? r->batch : shapes[i].shape[d];
        if (ov_check(ov_partial_shape_create_static(shapes[i].rank, dims, &partial[i]), "creating a shape", err))
            goto done;
        made = i + 1;
    }
    if (ov_check(ov_model_reshape(model, (const char **)names, partial, (size_t)n), "fixing the input shapes", err) ||
        ov_check(ov_core_compile_model(r->core, model, DEVICE, 4, out, ov_property_key_hint_inference_precision, "f32",
                                       ov_property_key_hint_performance_mode, "LATENCY"),
                 "compiling the model", err))
        goto done;
    rc = 0;
done:
    if (!partial) cn_fail(err, "out of memory");
    for (int i = 0; i < made; i++) ov_partial_shape_free(&partial[i]);
    free(partial);
    if (model) ov_model_free(model);
    return rc;
}

static int runner_open(runner *r, const cn_manifest *m, const float *image, char *err) {
    const int D = m->depth, nd = m->n_drive;
    r->m = m;
    r->image = image;
    r->batch = cn_batch(m);
    const char **names = calloc((size_t)m->n_inputs, sizeof *names);
    if (!names) {
        cn_fail(err, "out of memory");
        return -1;
    }
    for (int i = 0; i < m->n_inputs; i++) names[i] = m->inputs[i].name;
    int rc = ov_check(ov_core_create(&r->core), "creating the core", err) ||
             compile(r, m->model_path, m->n_inputs, names, m->inputs, &r->step_model, err);
    free(names);
    if (rc) return -1;
    r->sets[0] = calloc((size_t)D, sizeof(ov_tensor_t *));
    r->sets[1] = calloc((size_t)D, sizeof(ov_tensor_t *));
    r->drives = calloc((size_t)nd, sizeof(ov_tensor_t *));
    if (!r->sets[0] || !r->sets[1] || !r->drives) {
        cn_fail(err, "out of memory");
        return -1;
    }
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < D; i++) {
            int64_t dims[4] = {r->batch, m->state_shape[i][1], m->state_shape[i][2], m->state_shape[i][3]};
            if (new_tensor(4, dims, &r->sets[k][i], err)) return -1;
        }
    for (int i = 0; i < nd; i++) {
        int64_t dims[CN_MAX_RANK];
        memcpy(dims, m->inputs[i].shape, sizeof dims);
        dims[0] = r->batch;
        if (new_tensor(m->inputs[i].rank, dims, &r->drives[i], err)) return -1;
    }
    int64_t logits_dims[2] = {r->batch, m->num_classes};
    if (new_tensor(2, logits_dims, &r->logits, err)) return -1;
    /* Two requests bound once: request k reads state set k and writes set 1 - k; both share the drive
     * inputs and the logits. */
    for (int k = 0; k < 2; k++) {
        if (ov_check(ov_compiled_model_create_infer_request(r->step_model, &r->requests[k]), "creating a request", err))
            return -1;
        char name[32];
        for (int i = 0; i < nd; i++)
            if (ov_check(ov_infer_request_set_tensor(r->requests[k], m->inputs[i].name, r->drives[i]), "binding", err))
                return -1;
        for (int i = 0; i < D; i++) {
            snprintf(name, sizeof name, "state_%d", i);
            if (ov_check(ov_infer_request_set_tensor(r->requests[k], name, r->sets[k][i]), "binding the state", err))
                return -1;
            snprintf(name, sizeof name, "next_state_%d", i);
            if (ov_check(ov_infer_request_set_tensor(r->requests[k], name, r->sets[1 - k][i]), "binding the state", err))
                return -1;
        }
        if (ov_check(ov_infer_request_set_tensor(r->requests[k], "logits", r->logits), "binding the logits", err))
            return -1;
    }
    if (m->encode_path) { /* stepwise-drive: the encode graph writes the drive terms straight into the drive tensors */
        const char *image_name[1] = {"image"};
        cn_io image_io = {NULL, 4, {r->batch, m->in_channels, m->image_size, m->image_size}};
        int64_t dims[4] = {r->batch, m->in_channels, m->image_size, m->image_size};
        if (compile(r, m->encode_path, 1, image_name, &image_io, &r->encode_model, err) ||
            new_tensor(4, dims, &r->encode_image, err) ||
            ov_check(ov_compiled_model_create_infer_request(r->encode_model, &r->encode_request), "creating a request",
                     err) ||
            ov_check(ov_infer_request_set_tensor(r->encode_request, "image", r->encode_image), "binding", err))
            return -1;
        for (int i = 0; i < nd; i++)
            if (ov_check(ov_infer_request_set_tensor(r->encode_request, m->inputs[i].name, r->drives[i]),
                         "binding the encode graph's outputs", err))
                return -1;
    }
    return 0;
}

/* The spontaneous state into set 0, the image into the drive (through the encode graph if there is one). */
static int runner_start(void *ctx, char *err) {
    runner *r = ctx;
    const cn_manifest *m = r->m;
    size_t pixels = (size_t)m->in_channels * m->image_size * m->image_size;
    for (int i = 0; i < m->depth; i++)
        if (fill_rows(r->sets[0][i], m->spontaneous[i], m->state_size[i], r->batch, err)) return -1;
    r->cur = 0;
    if (!r->encode_request) return fill_rows(r->drives[0], r->image, pixels, r->batch, err);
    return fill_rows(r->encode_image, r->image, pixels, r->batch, err) ||
           ov_check(ov_infer_request_infer(r->encode_request), "running the encode graph", err);
}

static int runner_step(void *ctx, const float **logits, char *err) {
    runner *r = ctx;
    if (ov_check(ov_infer_request_infer(r->requests[r->cur]), "running a step", err)) return -1;
    r->cur = 1 - r->cur;
    *logits = data(r->logits); /* row 0: the image (every row holds it for a fixed batch > 1) */
    return *logits ? 0 : ov_check(GENERAL_ERROR, "reading the logits", err);
}

static void runner_close(runner *r) {
    for (int k = 0; k < 2; k++) {
        if (r->requests[k]) ov_infer_request_free(r->requests[k]);
        for (int i = 0; r->sets[k] && i < r->m->depth; i++)
            if (r->sets[k][i]) ov_tensor_free(r->sets[k][i]);
        free(r->sets[k]);
    }
    for (int i = 0; r->drives && i < r->m->n_drive; i++)
        if (r->drives[i]) ov_tensor_free(r->drives[i]);
    free(r->drives);
    if (r->encode_request) ov_infer_request_free(r->encode_request);
    if (r->logits) ov_tensor_free(r->logits);
    if (r->encode_image) ov_tensor_free(r->encode_image);
    if (r->step_model) ov_compiled_model_free(r->step_model);
    if (r->encode_model) ov_compiled_model_free(r->encode_model);
    if (r->core) ov_core_free(r->core);
}

int main(int argc, char **argv) {
    char err[CN_ERR] = "";
    cn_args args;
    cn_manifest m;
    cn_result result = {0};
    runner r = {0};
    float *image = NULL;
    int rc = 1;
    memset(&m, 0, sizeof m);
    if (cn_parse_args(argc, argv, &args, err)) goto done;
    if (args.help) {
        puts(cn_usage());
        return 0;
    }
    if (cn_manifest_read(args.model, args.manifest, "onnx", cn_onnx_metadata, NULL, &m, err) || cn_plan(&m, &args, err) ||
        cn_read_image(args.image, &m, &image, err) || runner_open(&r, &m, image, err))
        goto done;
    cn_stepper stepper = {runner_start, runner_step, &r};
    if (cn_run(&m, &args, &stepper, &result, err)) goto done;
    ov_version_t version;
    char runtime[160] = "OpenVINO " DEVICE;
    if (ov_get_openvino_version(&version) == OK) {
        snprintf(runtime, sizeof runtime, "OpenVINO %s (C API, " DEVICE ")", version.buildNumber);
        ov_version_free(&version);
    }
    if (cn_print_result(&m, &result, runtime)) {
        cn_fail(err, "cannot write the result to stdout");
        goto done;
    }
    rc = 0;
done:
    if (rc) fprintf(stderr, "cordsnet-classify: %s\n", err);
    if (r.m) runner_close(&r);
    else if (r.core) ov_core_free(r.core);
    free(result.logits);
    free(image);
    cn_manifest_free(&m);
    return rc;
}
