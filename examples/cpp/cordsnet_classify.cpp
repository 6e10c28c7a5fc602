// cordsnet-classify (C++17, ExecuTorch Module API): drive an exported stepwise .pte program one Euler step
// at a time.
//
//   cordsnet-classify MODEL.pte IMAGE.npy [--steps N] [--threshold P] [--margin M] [--manifest PATH] [--warmup]
//
// MODEL is a `stepwise` program (inputs image, state_0..D-1; outputs logits, next_state_0..D-1) or a
// `stepwise-drive` program (inputs skip, ff0, state_*) with its encode program beside it, exported with
// `cordsnet-cli export --format executorch --graph stepwise` (XNNPACK delegate). Its client manifest
// `MODEL.cordsnet.json` supplies the spontaneous state, the protocol and the decision block, once it agrees
// with the metadata the program itself returns from its constant method `cordsnet_metadata`; the manifest,
// the image, the decision rule and the JSON result are the C client's (examples/c/cordsnet_client.c),
// so both native programs read and decide alike.
//
// The state lives in tensors this program owns (TensorPtr over its own buffers), bound once as the
// inputs of every step. A program's outputs live in its planned memory, which the next call reuses,
// so after each step the next state is copied into the input tensors (ExecuTorch's Module cannot
// write an output straight into a caller's tensor when the output is memory-planned, as here).
// Prints one JSON object on stdout; bad input is one line on stderr and exit status 1.

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/platform/platform.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cordsnet_client.h"

#ifndef CORDSNET_EXECUTORCH_VERSION
#define CORDSNET_EXECUTORCH_VERSION ""
#endif

namespace {

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::extension::from_blob;
using executorch::extension::Module;
using executorch::extension::TensorPtr;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::Tag;

constexpr const char* kMethod = "forward";
// cordsnet.artifact.kinds.PTE_METADATA_METHOD: the constant method that returns the program's own
// cordsnet.* metadata as JSON text (what the manifest is checked against).
constexpr const char* kMetadataMethod = "cordsnet_metadata";

// One float32 buffer and the tensor that views it (the tensor never owns the bytes).
struct Buffer {
  std::vector<float> data;
  TensorPtr tensor;

  Buffer(std::vector<SizesType> sizes, size_t numel) : data(numel, 0.0f) {
    tensor = from_blob(data.data(), std::move(sizes), ScalarType::Float);
  }
};

// ExecuTorch's log, kept off stderr (the result contract: one JSON object on stdout, one line on stderr
// on failure): its last error message goes into the error line instead.
std::string last_runtime_error;

void log_sink(et_timestamp_t, et_pal_log_level_t level, const char*, const char*, size_t, const char* message,
              size_t length) {
  if (level == kError || level == kFatal) {
    last_runtime_error.assign(message, length);
    for (char& c : last_runtime_error) {  // one line, and it may quote bytes of a corrupt file
      const auto byte = static_cast<unsigned char>(c);
      if (c == '\n' || c == '\r' || c == '\t') c = ' ';
      else if (byte < 0x20 || byte > 0x7e) c = '?';
    }
    while (!last_runtime_error.empty() && last_runtime_error.back() == ' ')
      last_runtime_error.pop_back();
  }
}

std::string error_name(Error e) {
  std::string text = "ExecuTorch error " + std::to_string(static_cast<int>(e));
  if (!last_runtime_error.empty()) text += ": " + last_runtime_error.substr(0, 200);
  return text;
}

// A program with one method: loaded, its inputs checked against the manifest's (count, non-batch sizes).
class Program {
 public:
  bool open(const std::string& path, const std::vector<const cn_io*>& inputs, size_t outputs, char* err) {
    module_ = std::make_unique<Module>(path, Module::LoadMode::Mmap);
    Error e = module_->load_method(kMethod);
    if (e != Error::Ok) {
      cn_fail(err, "model: ExecuTorch cannot load '%s' (%s): not a loadable .pte program", path.c_str(),
              error_name(e).c_str());
      return false;
    }
    auto meta = module_->method_meta(kMethod);
    if (!meta.ok() || meta->num_inputs() != inputs.size() || meta->num_outputs() != outputs) {
      cn_fail(err, "model: '%s' has %zu inputs and %zu outputs; its manifest lists %zu and %zu", path.c_str(),
              meta.ok() ? meta->num_inputs() : 0, meta.ok() ? meta->num_outputs() : 0, inputs.size(), outputs);
      return false;
    }
    for (size_t i = 0; i < inputs.size(); i++) {
      auto tag = meta->input_tag(i);
      auto info = meta->input_tensor_meta(i);
      bool same = tag.ok() && *tag == Tag::Tensor && info.ok() && info->scalar_type() == ScalarType::Float &&
                  info->sizes().size() == static_cast<size_t>(inputs[i]->rank);
      for (int d = 1; same && d < inputs[i]->rank; d++) same = info->sizes()[d] == inputs[i]->shape[d];
      if (!same) {
        cn_fail(err, "model: input %zu of '%s' is not the float32 tensor '%s' its manifest describes", i,
                path.c_str(), inputs[i]->name);
        return false;
      }
    }
    return true;
  }

  // Run with `inputs`; checks that every output is a float32 tensor of the expected element count.
  const std::vector<EValue>* run(const std::vector<EValue>& inputs, const std::vector<size_t>& numel, char* err) {
    auto result = module_->execute(kMethod, inputs);
    if (!result.ok()) {
      cn_fail(err, "ExecuTorch: running the program failed (%s)", error_name(result.error()).c_str());
      return nullptr;
    }
    outputs_ = std::move(*result);
    if (outputs_.size() != numel.size()) {
      cn_fail(err, "ExecuTorch: the program returned %zu outputs, expected %zu", outputs_.size(), numel.size());
      return nullptr;
    }
    for (size_t i = 0; i < numel.size(); i++) {
      if (!outputs_[i].isTensor() || outputs_[i].toTensor().scalar_type() != ScalarType::Float ||
          static_cast<size_t>(outputs_[i].toTensor().numel()) != numel[i]) {
        cn_fail(err, "ExecuTorch: output %zu is not a float32 tensor of %zu values", i, numel[i]);
        return nullptr;
      }
    }
    return &outputs_;
  }

 private:
  std::unique_ptr<Module> module_;
  std::vector<EValue> outputs_;
};

// cn_metadata_reader of a .pte: the map its metadata method returns (none when it has no such method,
// which cn_manifest_read refuses as not a cordsnet export).
int read_metadata(void*, const char* path, cn_metadata* meta, char* err) {
  *meta = cn_metadata{};
  Module module(path, Module::LoadMode::Mmap);
  auto names = module.method_names();
  if (!names.ok()) {
    cn_fail(err, "model: ExecuTorch cannot load '%s' (%s): not a loadable .pte program", path,
            error_name(names.error()).c_str());
    return -1;
  }
  if (!names->count(kMetadataMethod)) return 0;
  auto out = module.execute(kMetadataMethod);
  if (!out.ok() || out->size() != 1 || !(*out)[0].isString()) {
    cn_fail(err, "model: '%s' has a malformed %s method (expected one JSON string)%s%s", path, kMetadataMethod,
            out.ok() ? "" : ": ", out.ok() ? "" : error_name(out.error()).c_str());
    return -1;
  }
  const auto text = (*out)[0].toString();
  return cn_metadata_from_json(text.data(), text.size(), path, meta, err);
}

void copy_out(const EValue& value, Buffer& into) {
  std::memcpy(into.data.data(), value.toTensor().const_data_ptr<float>(), into.data.size() * sizeof(float));
}

class Runner {
 public:
  Runner(const cn_manifest& m, const float* image) : m_(m), image_(image), batch_(cn_batch(&m)) {}

  bool open(char* err) {
    const int D = m_.depth, nd = m_.n_drive;
    const auto B = static_cast<SizesType>(batch_);
    std::vector<const cn_io*> inputs;
    for (int i = 0; i < m_.n_inputs; i++) inputs.push_back(&m_.inputs[i]);
    if (!step_.open(m_.model_path, inputs, 1 + D, err)) return false;
    for (int i = 0; i < nd; i++) drives_.push_back(make(m_.inputs[i]));
    for (int i = 0; i < D; i++) state_.push_back(make(m_.inputs[nd + i]));
    logits_.assign(static_cast<size_t>(m_.num_classes), 0.0f);
    step_numel_.push_back(static_cast<size_t>(batch_ * m_.num_classes));
    for (int i = 0; i < D; i++) step_numel_.push_back(state_[i]->data.size());
    // Bound once: the inputs are views of this program's own buffers, refilled in place.
    for (auto& b : drives_) step_inputs_.emplace_back(b->tensor);
    for (auto& b : state_) step_inputs_.emplace_back(b->tensor);
    const size_t pixels = static_cast<size_t>(m_.in_channels) * m_.image_size * m_.image_size;
    image_buffer_ = std::make_unique<Buffer>(
        std::vector<SizesType>{B, m_.in_channels, m_.image_size, m_.image_size}, pixels * batch_);
    for (int b = 0; b < batch_; b++) std::memcpy(image_buffer_->data.data() + b * pixels, image_, pixels * sizeof(float));
    if (m_.encode_path) {  // stepwise-drive: the encode program maps the image to the drive terms once per image
      cn_io image_io{const_cast<char*>("image"), 4, {B, m_.in_channels, m_.image_size, m_.image_size}};
      if (!encode_.open(m_.encode_path, {&image_io}, static_cast<size_t>(nd), err)) return false;
      for (auto& b : drives_) encode_numel_.push_back(b->data.size());
    }
    return true;
  }

  int start(char* err) {
    for (int i = 0; i < m_.depth; i++)
      for (int b = 0; b < batch_; b++)
        std::memcpy(state_[i]->data.data() + b * m_.state_size[i], m_.spontaneous[i],
                    m_.state_size[i] * sizeof(float));
    if (!m_.encode_path) {
      std::copy(image_buffer_->data.begin(), image_buffer_->data.end(), drives_[0]->data.begin());
      return 0;
    }
    const auto* out = encode_.run({EValue(image_buffer_->tensor)}, encode_numel_, err);
    if (!out) return -1;
    for (size_t i = 0; i < drives_.size(); i++) copy_out((*out)[i], *drives_[i]);
    return 0;
  }

  int step(const float** logits, char* err) {
    const auto* out = step_.run(step_inputs_, step_numel_, err);
    if (!out) return -1;
    for (size_t i = 0; i < state_.size(); i++) copy_out((*out)[1 + i], *state_[i]);
    std::memcpy(logits_.data(), (*out)[0].toTensor().const_data_ptr<float>(), logits_.size() * sizeof(float));
    *logits = logits_.data();  // row 0: the image (every row holds it for a fixed batch > 1)
    return 0;
  }

 private:
  std::unique_ptr<Buffer> make(const cn_io& io) {
    std::vector<SizesType> sizes{static_cast<SizesType>(batch_)};
    size_t numel = static_cast<size_t>(batch_);
    for (int d = 1; d < io.rank; d++) {
      sizes.push_back(static_cast<SizesType>(io.shape[d]));
      numel *= static_cast<size_t>(io.shape[d]);
    }
    return std::make_unique<Buffer>(std::move(sizes), numel);
  }

  const cn_manifest& m_;
  const float* image_;
  int batch_;
  Program step_, encode_;
  std::vector<std::unique_ptr<Buffer>> drives_, state_;
  std::unique_ptr<Buffer> image_buffer_;
  std::vector<EValue> step_inputs_;
  std::vector<size_t> step_numel_, encode_numel_;
  std::vector<float> logits_;
};

int start_cb(void* ctx, char* err) { return static_cast<Runner*>(ctx)->start(err); }
int step_cb(void* ctx, const float** logits, char* err) { return static_cast<Runner*>(ctx)->step(logits, err); }

// Owns what the C half allocates.
struct Resources {
  cn_manifest manifest{};
  float* image = nullptr;
  cn_result result{};
  ~Resources() {
    std::free(result.logits);
    std::free(image);
    cn_manifest_free(&manifest);
  }
};

}  // namespace

int main(int argc, char** argv) {
  char err[CN_ERR] = "";
  cn_args args;
  Resources r;
  executorch::runtime::register_pal(executorch::runtime::PalImpl::create(log_sink, __FILE__));
  auto fail = [&err]() {
    std::fprintf(stderr, "cordsnet-classify: %s\n", err);
    return 1;
  };
  if (cn_parse_args(argc, argv, &args, err)) return fail();
  if (args.help) {
    std::puts(cn_usage());
    return 0;
  }
  if (cn_manifest_read(args.model, args.manifest, "executorch", read_metadata, nullptr, &r.manifest, err) ||
      cn_plan(&r.manifest, &args, err) || cn_read_image(args.image, &r.manifest, &r.image, err))
    return fail();
  Runner runner(r.manifest, r.image);
  if (!runner.open(err)) return fail();
  cn_stepper stepper{start_cb, step_cb, &runner};
  if (cn_run(&r.manifest, &args, &stepper, &r.result, err)) return fail();
  const std::string runtime =
      std::string("ExecuTorch ") + CORDSNET_EXECUTORCH_VERSION + " (Module API, XNNPACK, CPU)";
  if (cn_print_result(&r.manifest, &r.result, runtime.c_str())) {
    cn_fail(err, "cannot write the result to stdout");
    return fail();
  }
  return 0;
}
