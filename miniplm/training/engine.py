"""What the trainer trains: the student's model, its speed-ups (fused layers, torch.compile,
float8), the module DeepSpeed wraps (model and loss), DeepSpeed's config, and reading its
checkpoints safely."""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

import torch

from miniplm.errors import ConfigError, StageError
from miniplm.models.kernels import apply_liger_layers, attention_implementation, compile_layers, linear_ce_kernel
from miniplm.models.presets import qwen_config
from miniplm.schema.students import StudentConfig
from miniplm.training.objective import NextTokenLoss

if TYPE_CHECKING:
    from miniplm.training.distill import Distillation


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def deepspeed_config(student: StudentConfig, micro_rows: int, accumulation: int, bf16: bool) -> dict:
    zero: dict[str, Any] = {"stage": student.zero_stage}
    if student.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    config = {
        "train_micro_batch_size_per_gpu": micro_rows,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": student.clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        # we pass torch's AdamW: no C++ optimizer to build, and offload still works
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31,
    }
    if bf16 and student.zero_stage >= 1:
        # bf16 weights for the passes, float32 master weights in the optimizer (DeepSpeed's), and
        # gradients accumulated over micro-batches in float32: in bf16, small gradients added to a
        # large sum vanish. DeepSpeed offers float32 accumulation with ZeRO only; stage 0 keeps bf16.
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return deep_merge(config, student.deepspeed)


def build_model(
    student: StudentConfig, tokenizer, seq_len: int, dtype: torch.dtype, device: str = "cpu", init: str | None = None
):
    """The student's Hugging Face model in float32 (DeepSpeed casts it to bf16 and keeps float32
    master weights): random weights of its preset or config, or the weights in `init`; with float8
    matmuls when asked for. Nothing compiled yet (see `speed_up`)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    # a compiled model takes torch's own attention: a graph holds it whole, with nothing to wait for
    compiled = student.compile in ("model", "step")
    attn = "sdpa" if compiled else attention_implementation(dtype, device, choice=student.kernels)
    if init is not None:
        model = AutoModelForCausalLM.from_pretrained(
            init, attn_implementation=attn, dtype=torch.float32, device_map=device
        )
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            raise ConfigError(
                f"students.{student.name}: init {init!r} embeds {model.config.vocab_size} tokens, and "
                f"its token set's tokenizer has {len(tokenizer)}"
            )
    else:
        if student.preset:
            config = qwen_config(
                student.preset, len(tokenizer), max(seq_len, 2048), tokenizer.bos_token_id, tokenizer.eos_token_id
            )
        else:
            config = AutoConfig.from_pretrained(student.config)
            config.vocab_size = len(tokenizer)
        with torch.device(device):  # initialised where it trains: a 1B model takes seconds on a GPU, minutes on a CPU
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    if student.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if student.float8:
        to_float8(model, student, device)
    elif student.compile == "off":
        apply_liger_layers(model, device, student.kernels)
    return model


def to_float8(model: torch.nn.Module, student: StudentConfig, device: str) -> None:
    """torchao's float8 training for the decoder layers' linear layers (dynamic per-tensor scales;
    the vocabulary projection stays in bf16, as torchao and torchtitan advise)."""
    where = f"students.{student.name}: float8"
    if not device.startswith("cuda") or torch.cuda.get_device_capability(device) < (8, 9):
        raise ConfigError(f"{where} needs a CUDA GPU of compute capability 8.9 or newer (H100, H200, L40S): {device}")
    try:
        from torchao.float8 import convert_to_float8_training
    except ImportError:
        raise ConfigError(f"{where} needs torchao: pip install torchao") from None
    head = model.get_output_embeddings()

    def takes(module: torch.nn.Module, name: str) -> bool:
        # float8 matmuls need both dimensions divisible by 16
        return module is not head and module.in_features % 16 == 0 and module.out_features % 16 == 0

    convert_to_float8_training(model, module_filter_fn=takes)


def speed_up(model: torch.nn.Module, loss: NextTokenLoss, student: StudentConfig) -> None:
    """torch.compile as asked, once the micro-batch is chosen (compiling is lazy: a pass of another
    shape compiles again): each decoder layer, the whole body, or the body and the loss in one
    graph. Compiling happens at the first training pass."""
    if student.compile == "layers":
        # torch.compile fuses these layers itself; liger's Triton kernels inside compiled graphs
        # crashed with an illegal memory access on an H200 (torch 2.11, triton 3.6)
        compile_layers(model)
    elif student.compile == "model":
        model.base_model.compile()
    elif student.compile == "step":
        loss.compile_step(cuda_graphs=student.cuda_graphs)


def objective(
    student: StudentConfig, model: torch.nn.Module, device: str, distill: Distillation | None = None
) -> NextTokenLoss:
    """The module DeepSpeed trains: the model and its loss, with the fused kernel this machine has
    (and, for a distilled student, its distillation). A step compiled whole takes the chunked
    torch loss, which the compiler fuses: the library kernels wait for the host."""
    zero3 = student.zero_stage == 3
    choice = "torch" if student.compile == "step" else student.kernels
    kernel = linear_ce_kernel(device, choice, weight_in_backward=not zero3)
    return NextTokenLoss(model, kernel, zero3=zero3, distill=distill)


def _checkpoint_classes() -> list:
    """The classes besides tensors and plain containers that DeepSpeed's ZeRO checkpoints hold:
    plain records, safe to rebuild from a file."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_tensors_only(engine) -> None:
    """Make `engine` read checkpoint files as tensors and plain data only (torch's weights_only),
    never as arbitrary pickles that could run code: a run directory may be shared, and DeepSpeed
    itself unpickles everything. A file holding anything else is refused, named."""

    def load(path: str, map_location=None):
        try:
            with torch.serialization.safe_globals(_checkpoint_classes()):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[-1][:300]
            raise StageError(
                f"{path}: not a checkpoint miniplm wrote: it holds objects other than tensors and "
                f"DeepSpeed's state ({first}); it was not loaded. Move the checkpoint folder away to "
                "start over from the previous one, or redo the training with --force"
            ) from None

    engine.checkpoint_engine.load = load
