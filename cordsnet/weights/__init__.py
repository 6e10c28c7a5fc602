"""The models installed with the package (torch-free: the CLI reads these names for --help)."""

DEFAULT_CHECKPOINT = "digits_r4.safetensors"  # the default model's file name in this folder
# The bundled models by name: file names in this folder.
BUNDLED: dict[str, str] = {
    "digits": DEFAULT_CHECKPOINT,  # the default model: CordsNet-R4 on scikit-learn digits, float32
    "digits-qat": "digits_r4_qat.safetensors",  # the same, fine-tuned for int8 (stores its activation ranges)
}
# The default model's stepwise ONNX graph, exported and verified by tools/bundle_web_graph.py, with its client
# manifest beside it: what `cordsnet-cli web` serves (and the Node/C clients run) without torch.
BUNDLED_STEPWISE = "digits_r4-stepwise.onnx"
