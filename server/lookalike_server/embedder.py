"""ONNX Runtime: one session per server, providers chosen deliberately and reported in one line."""

from __future__ import annotations

import logging
import os

import numpy as np
import onnxruntime as ort

from .config import DEVICES
from .errors import StartupError
from .model_card import ModelCard
from .text_tower import TextEncoder

log = logging.getLogger(__name__)

_GPU_PROVIDERS = {
    "cuda": ["CUDAExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
}


def _wanted_providers(device: str) -> list[str]:
    available = set(ort.get_available_providers())
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "auto":
        wanted = [p for p in ("CUDAExecutionProvider",) if p in available]
    else:
        wanted = [p for p in _GPU_PROVIDERS[device] if p in available]
        if not wanted:
            raise StartupError(
                f"--device {device} asked for {_GPU_PROVIDERS[device][0]}, but this onnxruntime build "
                f"offers only {sorted(available)}"
            )
    return [*wanted, "CPUExecutionProvider"]


class Embedder:
    """Runs the card's network on a batch of preprocessed images and returns raw embeddings."""

    def __init__(self, card: ModelCard, device: str = "auto", threads: int = 0, require_gpu: bool = False,
                 io_binding: bool | None = None, fp16: bool = False) -> None:
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        self.card = card
        cores = os.cpu_count() or 1
        providers = _wanted_providers(device)
        # On a CPU, single-threaded runs side by side (one per core) beat one run over every core:
        # 219 vs 157 img/s at batch 1 and 219 vs 195 at batch 4 on 2 cores, and each run stays on the
        # thread that called it, so that thread's priority applies.
        self.intra_op_threads = threads or (1 if providers == ["CPUExecutionProvider"] else cores)
        # The network as served: the card's output alone (an exported classifier beside it is left out).
        served = serving_model(card)
        self.session = self._session(device, providers, fp16, served)
        if not threads and self.session.get_providers()[0] == "CPUExecutionProvider" and self.intra_op_threads != 1:
            # A GPU build on a machine without a usable GPU fell back to the CPU: lay the runs out for it.
            self.intra_op_threads = 1
            self.session = self._session(device, ["CPUExecutionProvider"], fp16, served)
        self.provider = self.session.get_providers()[0]
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if card.input_name not in inputs:
            raise ValueError(f"model {card.name} has no input {card.input_name!r}; it has {sorted(inputs)}")
        if card.output_name not in outputs:
            raise ValueError(f"model {card.name} has no output {card.output_name!r}; it has {sorted(outputs)}")
        self.on_gpu = self.provider != "CPUExecutionProvider"
        if fp16 and not self.on_gpu:
            raise StartupError(
                f"--fp16 needs a GPU execution provider, and none is active (device {device}): on a CPU, "
                "ONNX Runtime runs float16 networks through casts, slower than float32"
            )
        quantized = "lookalike.quantization" in self.session.get_modelmeta().custom_metadata_map
        self.precision = "float16" if fp16 else "int8" if quantized else "float32"
        if fp16 and self.provider == "CUDAExecutionProvider":
            # The CUDA provider runs a network in the precision it was saved in: convert it once, here.
            self.session = self._session(device, providers, fp16, model=float16_model(served))
        if device == "tensorrt" and self.provider != "TensorrtExecutionProvider" and self.on_gpu:
            log.warning("--device tensorrt: TensorRT could not start (see ONNX Runtime's log); embedding with %s",
                        self.provider)
        if self.on_gpu and quantized:
            log.warning("model %s is int8, made for CPUs: on a GPU serve the float32 card (or --fp16)", card.name)
        if not self.on_gpu:
            if require_gpu:
                raise StartupError(
                    f"--require-gpu: no GPU execution provider is active (device {device}; this onnxruntime "
                    f"offers {ort.get_available_providers()}, and none of the GPU ones could start)"
                )
            if device != "auto" and device != "cpu":
                raise StartupError(f"--device {device}: no GPU execution provider could start; see the log")
            if device == "auto":
                log.info("no GPU execution provider is usable here; embedding on the CPU")
        # Runs at once: one per core's worth of threads on a CPU; a GPU takes one bulk run at a time.
        self.concurrent_runs = 1 if self.on_gpu else max(1, cores // self.intra_op_threads)
        # On a GPU, IO binding lets ONNX Runtime copy inputs and outputs once, without extra staging.
        self.io_binding = self.on_gpu if io_binding is None else io_binding
        # The text tower runs on the same providers, in float32 (prompts are few and short).
        self.text: TextEncoder | None = None
        if card.text is not None:
            text_providers = self.session.get_providers()
            self.text = TextEncoder(card, self._session(device, text_providers, False, model=str(card.text.model_path)))

    def _session(self, device: str, providers: list[str], fp16: bool, model: bytes | str) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.intra_op_threads
        options.log_severity_level = 3
        # Idle ONNX Runtime threads spin by default; on a few cores shared with the image decoders that
        # spinning steals their CPU (measured: 22 -> 15.5 ms of CPU per image in decode + inference).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if device == "auto":
            # Probing for a GPU must not print ONNX Runtime's error screens on a CPU machine: one line of ours.
            ort.set_default_logger_severity(4)
        options_of = {
            # The batcher makes batches of any size up to its maximum, and cuDNN's default exhaustive search
            # for the fastest convolution runs again for every new input shape, under a live request.
            "CUDAExecutionProvider": {"cudnn_conv_algo_search": "HEURISTIC"},
            # TensorRT builds float16 engines itself from the float32 network.
            "TensorrtExecutionProvider": {"trt_fp16_enable": True} if fp16 else {},
        }
        providers = [(p, options_of[p]) if options_of.get(p) else p for p in providers]
        try:
            return ort.InferenceSession(model, sess_options=options, providers=providers)
        finally:
            ort.set_default_logger_severity(2)

    @property
    def dimension(self) -> int:
        return self.card.dimension

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 to (N, dimension) float32, not yet normalised."""
        if self.io_binding:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.card.input_name, batch)
            binding.bind_output(self.card.output_name)
            self.session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            (out,) = self.session.run([self.card.output_name], {self.card.input_name: batch})
        out = np.ascontiguousarray(out, dtype=np.float32).reshape(len(batch), -1)
        if out.shape[1] != self.card.dimension:
            raise RuntimeError(
                f"model {self.card.name} returned {out.shape[1]}-d vectors, its card says {self.card.dimension}"
            )
        return out


def serving_model(card: ModelCard) -> bytes | str:
    """The card's network with only what its output needs: ONNX Runtime runs every node of the graph on each
    call, whichever outputs are asked for, and an exported classifier beside the embedding (EfficientNet-Lite0's
    `logits`, 1280 x 1000) cost 0.33 of 8.9 ms an image in float32 and 0.09 of 5.0 in int8, for nothing. The
    file's path when there is nothing to leave out (or when it keeps its weights in external files, or has
    subgraphs, whose outer-scope inputs this does not follow)."""
    import onnx

    path = str(card.model_path)
    model = onnx.load(path, load_external_data=False)
    graph = model.graph
    if [o.name for o in graph.output] == [card.output_name] or card.output_name not in {o.name for o in graph.output}:
        return path  # a missing output is reported by the Embedder, in its own words
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)
    subgraphs = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                    for n in graph.node for a in n.attribute)
    if external or subgraphs:
        return path
    needed = {card.output_name}
    kept = []
    for node in reversed(graph.node):  # a valid graph lists its nodes in topological order
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    outputs = [o for o in graph.output if o.name == card.output_name]
    del graph.output[:]
    graph.output.extend(outputs)
    for field in (graph.initializer, graph.value_info):
        keep = [t for t in field if t.name in needed]
        del field[:]
        field.extend(keep)
    inputs = [i for i in graph.input if i.name in needed or i.name == card.input_name]
    del graph.input[:]
    graph.input.extend(inputs)
    return model.SerializeToString()


def float16_model(model: bytes | str) -> bytes:
    """A network as served (serving_model's answer) with float16 weights and arithmetic, its input and output
    still float32 (so the rest of the server is unchanged); ONNX Runtime's own converter keeps ops without
    float16 kernels in float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    loaded = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model)
    return convert_float_to_float16(loaded, keep_io_types=True).SerializeToString()
