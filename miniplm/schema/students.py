"""`students:`: the models trained on token sets, with distillation when asked."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from miniplm.schema.base import EXECUTION_ONLY, KERNELS_HELP, KernelChoice, Name, Strict
from miniplm.schema.presets import PRESETS


class KDConfig(Strict):
    """Distillation in training: loss = (1 - weight) * CE + weight * KD (MiniPLM's vanilla KD: kd_ratio 0.5)."""

    teacher: str = Field(
        "teacher",
        description="teacher: the job's teacher; or a folder, hub id or smollm2-135m "
        "(it must share the student's tokenizer)",
    )
    source: Literal["online", "offline"] = Field(
        "online",
        description="online: the teacher runs in the training loop; offline: read the top-k log-probs the "
        "teacher-logits stage stored for the student's token set",
    )
    loss: Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"] = Field(
        "forward_kl", description="forward_kl: vanilla KD; reverse_kl: MiniLLM's; jsd; DistiLLM's skew KLs"
    )
    weight: float = Field(0.5, ge=0.0, le=1.0, description="of the KD term; CE gets 1 - weight")
    temperature: float = Field(1.0, gt=0.0, description="divides both models' logits in the KD term")
    beta: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="jsd: the teacher's share of the mixture (default 0.5); skew losses: the skew alpha (default 0.1)",
    )
    logits: str | None = Field(
        None, description="offline: the teacher_logits set to read (its tokens must be the student's)"
    )

    @model_validator(mode="after")
    def _offline_reads_a_set(self) -> "KDConfig":
        if self.source == "offline" and self.logits is None:
            raise ValueError("source offline reads stored teacher log-probs: name the teacher_logits set in logits")
        if self.source == "online" and self.logits is not None:
            raise ValueError("logits is read with source: offline only (online runs the teacher)")
        if self.source == "offline" and self.teacher != "teacher":
            raise ValueError("source offline takes its teacher from the teacher_logits set; set teacher there")
        return self


class StudentConfig(Strict):
    """A model to pretrain with DeepSpeed on a token set: RUN_DIR/models/NAME/."""

    name: Name
    preset: str | None = Field(None, description="tiny, tiny-4l, qwen-104m, qwen-200m, qwen-500m or qwen-1.2b")
    config: str | None = Field(None, description="instead of a preset: a Hugging Face config.json or model folder")
    init: str | None = Field(
        None,
        description="instead of a preset or config: start from these weights, a prune entry's name or a model folder",
    )
    tokens: str = Field(description="the token set (tokenize: name) to train on")
    heldout: str | None = Field(None, description="a token set for held-out loss", json_schema_extra=EXECUTION_ONLY)
    steps: int = Field(gt=0)
    seed: int | None = Field(
        None, ge=0, lt=2**32, description="the training seed (initialisation, data order); default: the job's"
    )
    batch_tokens: int = Field(524_288, gt=0, description="global batch in tokens (the paper: 512 x 1024)")
    micro_batch: int | None = Field(
        None, gt=0, description="rows per device per forward pass (instead of micro_batch_tokens)"
    )
    micro_batch_tokens: Annotated[int, Field(gt=0)] | Literal["auto"] | None = Field(
        None,
        description="tokens per device per forward pass: the largest whole number of rows within it that "
        "divides the step; auto (the default when micro_batch is not given): the largest that fits the "
        "GPU's memory, measured once and recorded",
    )
    lr: float | None = Field(None, gt=0, description="peak learning rate; default: the preset's")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="cosine decays to lr * this")
    warmup_steps: int = Field(2000, ge=0)
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0)
    clip: float = Field(1.0, gt=0)
    zero_stage: int = Field(1, ge=0, le=3)
    offload_optimizer: bool = False
    gradient_checkpointing: bool = False
    deepspeed: dict[str, Any] = Field(default_factory=dict, description="merged over miniplm's DeepSpeed config")
    eval_every: int = Field(100, gt=0, json_schema_extra=EXECUTION_ONLY)
    eval_rows: int = Field(64, gt=0, description="held-out rows per evaluation", json_schema_extra=EXECUTION_ONLY)
    checkpoint_every: int = Field(500, gt=0, json_schema_extra=EXECUTION_ONLY)
    log_rows: bool = Field(
        False,
        description="write each step's row indices to the metrics (for audits and tests)",
        json_schema_extra=EXECUTION_ONLY,
    )
    tensorboard: bool = Field(False, json_schema_extra=EXECUTION_ONLY)
    wandb: bool = Field(False, json_schema_extra=EXECUTION_ONLY)
    kernels: KernelChoice = Field("auto", description=KERNELS_HELP, json_schema_extra=EXECUTION_ONLY)
    compile: Literal["off", "layers", "model", "step"] = Field(
        "off",
        description="torch.compile (minutes of compiling once, then faster steps): layers, each decoder "
        "layer; model, the whole body (the loss by the fused kernel); step, the body and the loss in one "
        "graph with nothing waiting for the host (true means step)",
        json_schema_extra=EXECUTION_ONLY,
    )
    cuda_graphs: bool = Field(
        False,
        description="with compile: step, replay the step as CUDA graphs (torch.compile's reduce-overhead)",
        json_schema_extra=EXECUTION_ONLY,
    )
    float8: bool = Field(
        False,
        description="float8 matmuls in the decoder layers (torchao's float8 training; CUDA compute "
        "capability 8.9 or newer: H100, H200, L40S)",
    )
    kd: KDConfig | None = Field(None, description="distill a teacher into the student while it trains")

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_true_is_step(cls, value: Any) -> Any:
        return {True: "step", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _one_micro_batch(self) -> "StudentConfig":
        if self.micro_batch is not None and self.micro_batch_tokens is not None:
            raise ValueError("give micro_batch (rows) or micro_batch_tokens, not both")
        if self.cuda_graphs and self.compile != "step":
            raise ValueError("cuda_graphs replays the compiled step: set compile: step")
        if self.compile in ("model", "step") and self.zero_stage == 3:
            raise ValueError(
                f"compile: {self.compile} with zero_stage 3 is not supported (ZeRO-3 gathers each layer's "
                "weights in hooks a whole-model graph would break on): use compile: layers"
            )
        return self

    @model_validator(mode="after")
    def _one_architecture(self) -> "StudentConfig":
        if sum(x is not None for x in (self.preset, self.config, self.init)) != 1:
            raise ValueError(
                "give exactly one of preset, config (random weights of that shape) or init (start from those weights)"
            )
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r} (presets: {', '.join(PRESETS)})")
        return self
