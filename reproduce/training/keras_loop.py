"""Training in Keras 3 (TensorFlow backend) with the same configs as the PyTorch loop.

``python -m reproduce.train --framework keras --config ...`` runs :func:`train_keras`. What it
shares with the PyTorch path (imported, not re-written) and what it does in TensorFlow:

* **Shared**: the config and its schema, the data pipeline (``training.data``: the dataset reader,
  ``reproduce.transforms`` augmentation seeded per stream position, the deterministic sampler, so
  both frameworks see the same images in the same order), the model definition (the Keras model is
  ``reference_models.keras.mirror`` of the registry's PyTorch model: layers named by state-dict
  paths), initialisation (``load_init_weights`` into the PyTorch model, then the state dict into
  Keras with ``converters.keras_writer``), the per-parameter lr/decay rules
  (``reproduce.schedule.param_groups`` on the state-dict names), the poly schedule, the loss
  denominators (``SegmentationLoss.denominators``), logging/TensorBoard (``training.logging``),
  the evaluation and best/last bookkeeping (``loop._evaluate`` on the weights written back into
  the PyTorch model), the run-folder/config-fingerprint rules.
* **TensorFlow**: the forward/backward pass (``tf.GradientTape``), the loss terms (logits resized
  with ``align_corners=True`` to the label size, softmax cross entropy over the non-ignored pixels,
  summed per pixel or per image exactly as ``reproduce.losses``; class weights, hard-pixel mining,
  focal loss and label smoothing as ``reproduce.pixel_losses``, whose TF twin it calls), and the SGD update written out
  as ``torch.optim.SGD`` (``v = m v + g + wd w; w -= lr v``) or Caffe's (``v = m v + lr (g + wd w);
  w -= v``), so one step from the same weights on the same batch matches PyTorch to float32 noise
  (``tests/test_train_keras.py``).
* **BatchNorm**: trained where the PyTorch model trains it (the mirror copies ``requires_grad``);
  ``bn: {mode: frozen}`` freezes every BatchNorm (moving statistics, no gamma/beta update). One
  documented difference: Keras updates the moving variance with the biased batch variance, PyTorch
  with the unbiased one (a relative difference of ``momentum / (n - 1)`` per step, n = pixels per
  channel in the batch).
* **Several GPUs**: ``tf.distribute.MirroredStrategy`` over the visible GPUs (one process): each
  micro-batch is split over the replicas, gradients are summed across them (the loss terms are
  divided by the global denominators, so the split does not change the update) and trained
  BatchNorm is synchronised (``synchronized=True``).
* **Outputs**: checkpoints ``keras_ckpt_<it>.pt`` + ``keras_latest.json`` (weights and momentum in
  the PyTorch state-dict layout, the dropout RNG states, the iteration), and at the end
  ``final.pth`` + ``final.json`` (loads strictly into the PyTorch model, provenance says
  ``framework: keras``) and ``final.weights.h5`` (``build_keras_model(...).load_weights``).
  On the CPU, with ``tf.config.experimental.enable_op_determinism``, a run interrupted and resumed
  ends bit-identical to an uninterrupted one (tested). On GPUs TF's determinism depends on the ops
  available deterministically; there a resumed run is exact in its data order, schedule and state,
  not necessarily to the last bit.

Supported: the v3/v3+ models and the single-scale v2 models (loss ``kind: upsample``); the 3-scale
v2 model and its 4-term Caffe loss train in PyTorch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from ..schedule import param_groups, poly_lr
from ..yamlfile import load_yaml
from .config import (
    Config,
    ConfigError,
    changed_keys,
    init_weights_path,
    parse_config,
    to_dict,
    weights_hint,
    write_run_config,
)
from .data import build_loader, build_preprocessing, build_train_dataset, iteration_batches
from .init_weights import build_model, load_init_weights

__all__ = ["KerasTrainer", "keras_state_dict", "train_keras", "KERAS_LATEST"]

KERAS_LATEST = "keras_latest.json"


def _tf() -> tuple[Any, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
        import tensorflow as tf
    except ImportError as e:
        raise ConfigError(f"--framework keras needs TensorFlow and Keras ({e.name} is missing): "
                          "pip install -e .[tf]") from None
    return tf, keras


# ============================================================================ layouts
def _to_torch(array: np.ndarray, layer: Any, var: str) -> np.ndarray:
    """A Keras variable's value in the PyTorch layout (the inverse of ``converters.keras_writer``)."""
    if var in ("kernel", "depthwise_kernel"):
        if type(layer).__name__ == "DepthwiseConv2D":  # (H, W, C, M) -> (C*M, 1, H, W)
            h, w, c, m = array.shape
            return np.ascontiguousarray(array.transpose(2, 3, 0, 1).reshape(c * m, 1, h, w))
        return np.ascontiguousarray(array.transpose(3, 2, 0, 1))  # HWIO -> OIHW
    return array


def _variable_names(model: Any) -> list[tuple[Any, Any, str, str]]:
    """``(layer, variable, keras variable name, state-dict key)`` for every variable of ``model``."""
    from converters.keras_writer import PARAM

    out = []
    for layer in model.layers:
        for variable in layer.weights:
            var = variable.path.rsplit("/", 1)[-1]
            if var not in PARAM:
                raise ConfigError(f"Keras layer {layer.name} has variable {var!r} with no state-dict counterpart")
            out.append((layer, variable, var, f"{layer.name}.{PARAM[var]}"))
    return out


def keras_state_dict(model: Any, template: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Keras model's weights as the PyTorch state dict ``template`` is laid out (every key, same shapes).

    Keys Keras has no twin of (``num_batches_tracked``) keep ``template``'s values.
    """
    out: dict[str, torch.Tensor] = {}
    for layer, variable, var, key in _variable_names(model):
        if key not in template:
            raise ConfigError(f"Keras variable {layer.name}/{var} maps to {key}, which the PyTorch model lacks")
        value = torch.from_numpy(_to_torch(np.asarray(variable.numpy()), layer, var))
        if tuple(value.shape) != tuple(template[key].shape):
            raise ConfigError(f"{key}: Keras gives {tuple(value.shape)}, PyTorch expects {tuple(template[key].shape)}")
        out[key] = value.to(template[key].dtype)
    for key, value in template.items():
        if key not in out:
            if not key.endswith("num_batches_tracked"):
                raise ConfigError(f"{key}: no Keras variable fills it")
            out[key] = value.detach().clone()
    return out


def _resize_align_corners_exact(x: Any, size: Any) -> Any:
    """Bilinear ``align_corners=True`` resize in the input's dtype (gather + lerp), for float64 checks."""
    import tensorflow as tf

    def axis(n_in: Any, n_out: Any) -> tuple[Any, Any, Any]:
        scale = tf.cast(n_in - 1, x.dtype) / tf.cast(tf.maximum(n_out - 1, 1), x.dtype)
        src = tf.cast(tf.range(n_out), x.dtype) * scale
        i0 = tf.cast(tf.floor(src), tf.int32)
        i1 = tf.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - tf.cast(i0, x.dtype)

    shape = tf.shape(x)
    h0, h1, lh = axis(shape[1], size[0])
    w0, w1, lw = axis(shape[2], size[1])
    top, bottom = tf.gather(x, h0, axis=1), tf.gather(x, h1, axis=1)
    rows = top + (bottom - top) * lh[None, :, None, None]
    left, right = tf.gather(rows, w0, axis=2), tf.gather(rows, w1, axis=2)
    return left + (right - left) * lw[None, None, :, None]


# ============================================================================ the trainer
class KerasTrainer:
    """The Keras twin of a (initialised) PyTorch model, with the config's loss and solver.

    ``step(micro_batches, lr)`` is one solver iteration, like :func:`reproduce.training.train_step`.
    """

    def __init__(self, cfg: Config | Mapping[str, Any], torch_model: nn.Module, *, strategy: Any = None,
                 dtype: str = "float32", criterion: Any = None) -> None:
        tf, keras = _tf()
        from converters.keras_writer import load_state_dict_into_keras
        from reference_models.deeplab_v2 import DeepLabV2
        from reference_models.deeplab_v3 import DeepLabV3
        from reference_models.keras.mirror import mirror_model

        from .loop import build_criterion

        cfg = parse_config(cfg)
        self.cfg, self.tf = cfg, tf
        self.dtype, self.np_dtype = getattr(tf, dtype), np.dtype(dtype)  # float64: exact comparisons in tests
        if isinstance(torch_model, DeepLabV2) and len(torch_model.scales) > 1:
            raise ConfigError(f"model {cfg.model.name}: the multi-scale DeepLab v2 (and its 4-term Caffe loss) trains "
                              "in PyTorch; Keras trains the single-scale v2 models and the v3/v3+ models")
        if not isinstance(torch_model, (DeepLabV2, DeepLabV3)):
            raise ConfigError(f"model {cfg.model.name}: --framework keras trains DeepLab v2 (single scale) and v3/v3+")
        if cfg.loss.kind != "upsample":
            raise ConfigError(f"loss.kind {cfg.loss.kind!r}: the Keras trainer implements 'upsample' (logits resized "
                              "to the labels, as DeepLab-TF)")
        if cfg.bn.mode == "frozen":
            for m in torch_model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.requires_grad_(False)
        # the loss options (class weights, mining, focal, smoothing) as the PyTorch loop resolves them
        self.criterion = criterion if criterion is not None else build_criterion(cfg)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = int(self.strategy.num_replicas_in_sync)
        self.template = {k: v.detach().cpu().clone() for k, v in torch_model.state_dict().items()}
        policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
        keras.config.set_floatx(dtype)
        keras.config.set_dtype_policy(dtype)
        try:
            with self.strategy.scope():
                self.model = mirror_model(torch_model, name=cfg.model.name)
        finally:
            keras.config.set_floatx(floatx)
            keras.config.set_dtype_policy(policy)
        with self.strategy.scope():
            load_state_dict_into_keras(self.model, self.template)
            if self.replicas > 1:
                for layer in self.model.layers:
                    if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
                        layer.synchronized = True
        # per-parameter multipliers: the PyTorch rules on the state-dict names
        s = cfg.solver
        rules = [{k: v for k, v in to_dict(r).items() if v is not None} for r in s.param_rules]
        mults = {name: (g["lr_mult"], g["decay_mult"]) for g in param_groups(torch_model, rules) for name in g["names"]}
        trainable = {id(v) for v in self.model.trainable_variables}
        self.names, self.variables, self.layers, self.var_kinds, lr_mult, decay = [], [], [], [], [], []
        for layer, variable, var, key in _variable_names(self.model):
            if id(variable) not in trainable:
                continue
            if key not in mults:
                raise ConfigError(f"{key} trains in Keras but not in PyTorch (requires_grad False there)")
            self.names.append(key)
            self.variables.append(variable)
            self.layers.append(layer)
            self.var_kinds.append(var)
            lr_mult.append(mults[key][0])
            decay.append(mults[key][1] * s.weight_decay)
        missing = sorted(set(mults) - set(self.names))
        if missing:
            raise ConfigError(f"{missing[:3]} train in PyTorch but have no trainable Keras variable")
        self.lr_mult, self.decay = lr_mult, decay
        self.momentum_value, self.caffe = float(s.momentum), s.optimizer == "caffe_sgd"
        with self.strategy.scope():
            self.momentum = [tf.Variable(tf.zeros_like(v.value), trainable=False, name=f"momentum_{i}")
                             for i, v in enumerate(self.variables)]
        self._grads_fn = None
        self._apply_fn = None

    # ------------------------------------------------------------------ loss
    def loss_terms(self, logits: Any, labels: Any, fraction: Any = None) -> dict[str, Any]:
        """Per-term sums, as ``ConfiguredLoss('upsample')`` (divide by the global denominators).

        ``fraction``: the hard-pixel mining share of this step (float32 tensor), when mining.
        """
        tf = self.tf
        from reference_models.keras.layers import resize_align_corners

        # (resize_bilinear computes in float32 whatever the input; float64 runs resize in float64 by hand)
        logits = tf.cast(logits, self.dtype)
        if self.dtype == tf.float32:
            logits = resize_align_corners(logits, tf.shape(labels)[1:3])
        else:
            logits = _resize_align_corners_exact(logits, tf.shape(labels)[1:3])
        ignore = self.criterion.ignore_index
        valid = tf.not_equal(labels, ignore)
        options = self.criterion.options
        if options.plain:
            safe = tf.where(valid, labels, tf.zeros_like(labels))
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
            ce = tf.where(valid, ce, tf.zeros_like(ce))
        else:
            from ..pixel_losses import pixel_losses_tf, top_k_reduce_tf

            ce = pixel_losses_tf(tf, logits, labels, ignore_index=ignore, options=options,
                                 factor=options.class_factor(self.cfg.model.num_classes))
            if options.mining:
                return {"out": top_k_reduce_tf(tf, ce, fraction)}
        if self.criterion.normalization == "pixels":
            return {"out": tf.reduce_sum(ce)}
        count = tf.maximum(tf.reduce_sum(tf.cast(valid, self.dtype), axis=[1, 2]), 1.0)  # Caffe: max(count, 1)
        return {"out": tf.reduce_sum(tf.reduce_sum(ce, axis=[1, 2]) / count)}

    def _build_fns(self) -> None:
        tf = self.tf
        variables = self.variables

        def replica_grads(x: Any, y: Any, den: Any, fraction: Any) -> tuple[Any, Any, list[Any]]:
            with tf.GradientTape() as tape:
                out = self.model(x, training=True)
                terms = self.loss_terms(out, y, fraction)
                loss = terms["out"] / den
            grads = tape.gradient(loss, variables)
            grads = [tf.zeros_like(v.value) if g is None else g for g, v in zip(grads, variables)]
            return loss, terms["out"], grads

        if self.replicas == 1:
            self._grads_fn = tf.function(replica_grads, reduce_retracing=True)
        else:
            strategy = self.strategy

            @tf.function(reduce_retracing=True)
            def distributed(x: Any, y: Any, den: Any, fraction: Any) -> tuple[Any, Any, list[Any]]:
                per = strategy.run(replica_grads, args=(x, y, den, fraction))
                sum_ = tf.distribute.ReduceOp.SUM
                return (strategy.reduce(sum_, per[0], axis=None), strategy.reduce(sum_, per[1], axis=None),
                        [strategy.reduce(sum_, g, axis=None) for g in per[2]])

            self._grads_fn = distributed

        m, caffe = self.momentum_value, self.caffe

        @tf.function(reduce_retracing=True)
        def apply(grads: list[Any], lr: Any) -> None:
            for v, buf, g, lm, wd in zip(variables, self.momentum, grads, self.lr_mult, self.decay):
                w = v.value
                d = g + wd * w if wd else g
                if caffe:  # Caffe SGDSolver: v = m v + lr (g + wd w); w -= v
                    buf.assign(m * buf + (lr * lm) * d)
                    v.assign_sub(buf)
                else:  # torch.optim.SGD / TF MomentumOptimizer: v = m v + (g + wd w); w -= lr v
                    buf.assign(m * buf + d)
                    v.assign_sub((lr * lm) * buf)

        self._apply_fn = apply

    def _split(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        if self.replicas == 1:
            return self.tf.constant(x), self.tf.constant(y)
        n = x.shape[0]
        if n % self.replicas:
            raise ConfigError(f"a micro-batch of {n} images does not split over {self.replicas} GPUs; make "
                              "solver.batch_size / solver.accum_steps a multiple of the GPU count")
        k = n // self.replicas
        xs = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: self.tf.constant(x[ctx.replica_id_in_sync_group * k:(ctx.replica_id_in_sync_group + 1) * k]))
        ys = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: self.tf.constant(y[ctx.replica_id_in_sync_group * k:(ctx.replica_id_in_sync_group + 1) * k]))
        return xs, ys

    def gradients(self, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, list[Any]]:
        """(loss, summed gradients in ``self.variables`` order) over the micro-batches, no update."""
        tf = self.tf
        if self._grads_fn is None:
            self._build_fns()
        den = 0.0
        for _, labels in micro_batches:
            den += float(self.criterion.denominators(self.criterion.targets(labels))["out"])
        if self.criterion.per_forward:  # mining: one normalised loss per forward pass, and each replica is one
            den *= self.replicas
        den = tf.constant(max(den, 1.0), self.dtype)
        fraction = tf.constant(self.criterion.mining_fraction(), tf.float32)
        total, grads = 0.0, None
        for images, labels in micro_batches:
            x = np.ascontiguousarray(images.numpy().transpose(0, 2, 3, 1), dtype=self.np_dtype)  # NCHW -> NHWC
            y = labels.numpy().astype(np.int32)
            xs, ys = self._split(x, y)
            loss, _, g = self._grads_fn(xs, ys, den, fraction)
            total += float(loss)
            grads = g if grads is None else [a + b for a, b in zip(grads, g)]
        return total, grads

    def apply(self, grads: list[Any], lr: float) -> None:
        """The solver update with ``grads`` (``self.variables`` order) at ``lr`` times each ``lr_mult``."""
        if self._apply_fn is None:
            self._build_fns()
        self._apply_fn(grads, self.tf.constant(lr, self.dtype))

    def step(self, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], lr: float) -> float:
        """One solver iteration at learning rate ``lr`` (times each variable's ``lr_mult``); returns the loss."""
        loss, grads = self.gradients(micro_batches)
        self.apply(grads, lr)
        return loss

    def torch_layout(self, index: int, value: Any) -> torch.Tensor:
        """A value shaped like ``self.variables[index]`` (e.g. its gradient) in the PyTorch layout."""
        return torch.from_numpy(_to_torch(np.asarray(value), self.layers[index], self.var_kinds[index]))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights in the PyTorch state-dict layout (loads strictly into the PyTorch model)."""
        return keras_state_dict(self.model, self.template)

    def _seed_generators(self) -> dict[str, Any]:
        _, keras = _tf()
        gens = {}  # keyed by position: weightless layers' names are Keras' automatic ones, unstable across builds
        for i, layer in enumerate(self.model.layers):
            for attr, value in sorted(vars(layer).items()):
                if isinstance(value, keras.random.SeedGenerator):
                    gens[f"{i}:{type(layer).__name__}.{attr}"] = value
        return gens

    def checkpoint_state(self) -> dict[str, Any]:
        momentum = {name: self.torch_layout(i, buf.numpy()) for i, (name, buf) in enumerate(zip(self.names,
                                                                                                self.momentum))}
        seeds = {k: torch.from_numpy(np.asarray(g.state.numpy())) for k, g in self._seed_generators().items()}
        return {"model": self.state_dict(), "momentum": momentum, "keras_seeds": seeds}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        from converters.keras_writer import load_state_dict_into_keras, oihw_to_hwio

        load_state_dict_into_keras(self.model, state["model"])
        for name, buf, layer, var in zip(self.names, self.momentum, self.layers, self.var_kinds):
            value = state["momentum"][name].numpy()
            if var in ("kernel", "depthwise_kernel"):
                if type(layer).__name__ == "DepthwiseConv2D":
                    from converters.keras_writer import depthwise_to_hwcm

                    value = depthwise_to_hwcm(value, int(buf.shape[2]))
                else:
                    value = oihw_to_hwio(value)
            buf.assign(value)
        gens, saved = self._seed_generators(), state.get("keras_seeds", {})
        for key, value in saved.items():
            gens[key].state.assign(value.numpy())

    def check_checkpoint_state(self, path: Path, state: Mapping[str, Any]) -> None:
        """CheckpointError naming ``path`` unless its dropout RNG states fit this model's layers."""
        from ..checkpoint import CheckpointError

        gens, saved = self._seed_generators(), state.get("keras_seeds", {})
        if not isinstance(saved, dict) or set(gens) != set(saved):
            raise CheckpointError(f"{path}: the checkpoint's dropout RNG states do not match this model's layers")
        for key, gen in gens.items():
            value = saved[key]
            if not (isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(gen.state.shape)
                    and value.dtype == torch.from_numpy(np.asarray(gen.state.numpy())).dtype):
                raise CheckpointError(f"{path}: the dropout RNG state {key!r} is malformed")


# ============================================================================ the run
def _strategy(device: str | None) -> Any:
    tf, _ = _tf()
    want = device or "auto"
    gpus = tf.config.list_logical_devices("GPU")
    if want.startswith("cuda") and not gpus:
        raise ConfigError("device cuda requested but TensorFlow sees no GPU (use --device cpu)")
    if want == "cpu" or not gpus:
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    return tf.distribute.MirroredStrategy([g.name for g in gpus])


def _find_resume(run_dir: Path, cfg: Config, model: nn.Module) -> tuple[Path, dict[str, Any]] | None:
    """The newest Keras checkpoint in ``run_dir`` that loads safely and fits ``model`` and ``cfg``, or None
    (``reproduce.checkpoint.find_checkpoint``; the dropout seeds are checked once the trainer is built)."""
    from ..checkpoint import CheckpointError, check_state_dict, find_checkpoint
    from .loop import _check_bookkeeping, check_run_config

    expected = model.state_dict()
    rules = [{k: v for k, v in to_dict(r).items() if v is not None} for r in cfg.solver.param_rules]
    momentum = {n: expected[n] for g in param_groups(model, rules) for n in g["names"]}

    def check(path: Path, ckpt: dict[str, Any]) -> None:
        check_run_config(path, ckpt["config"], cfg)
        if ckpt.get("framework") != "keras":
            raise CheckpointError(f"{path}: not a Keras training checkpoint")
        check_state_dict(path, ckpt["model"], expected)
        check_state_dict(path, ckpt.get("momentum") if isinstance(ckpt.get("momentum"), dict) else {}, momentum,
                         what="momentum")
        _check_bookkeeping(path, ckpt, cfg)

    return find_checkpoint(run_dir, prefix="keras_ckpt_", pointer=KERAS_LATEST, check=check,
                           required=("model", "momentum", "rng", "config"))


def _save(run_dir: Path, it: int, trainer: KerasTrainer, cfg: Config, init_record: Mapping[str, Any],
          state: Mapping[str, Any]) -> None:
    from ..checkpoint import rng_state, save_checkpoint

    payload = {"framework": "keras", **trainer.checkpoint_state(), "rng": [rng_state()],
               "config": to_dict(cfg), "init": dict(init_record), "best": state["best"],
               "skipped": list(state["skipped"])}
    save_checkpoint(run_dir, it, payload, keep=cfg.keep_checkpoints, prefix="keras_ckpt_", pointer=KERAS_LATEST)


def train_keras(cfg: Config | Mapping[str, Any], run_dir: str | os.PathLike, *, strategy: Any = None) -> Path:
    """Run (or resume) the training ``cfg`` describes in Keras in ``run_dir``; return ``final.pth``."""
    tf, keras = _tf()
    from converters.keras_writer import save_keras

    from ..checkpoint import set_rng_state
    from .distributed import Dist
    from .logging import Logger
    from .loop import _evaluate, _write_weights

    cfg = parse_config(cfg)
    run_dir = Path(run_dir)
    strategy = strategy or _strategy(cfg.device)
    if cfg.amp:
        print("note: --amp is not used by the Keras trainer; training in float32")
    solver = cfg.solver
    max_iter, seed = solver.iterations, cfg.seed

    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "latest.json").is_file():
        raise ConfigError(f"{run_dir} holds a PyTorch run; use another --out for the Keras run")
    saved_cfg_path = run_dir / "config.yaml"
    if saved_cfg_path.is_file():
        try:
            saved = parse_config(load_yaml(saved_cfg_path) or {})
        except (ConfigError, yaml.YAMLError, OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{saved_cfg_path}: the run's saved config does not validate ({e})") from None
        diff = changed_keys(saved, cfg)
        if diff:
            raise ConfigError(f"{run_dir} holds a run of a different config ({'; '.join(diff[:6])}); use another "
                              "--out or delete the folder")
    write_run_config(saved_cfg_path, cfg)

    # Same seeds as the PyTorch loop (the head init of load_init_weights uses them), plus TF's.
    keras.utils.set_random_seed(seed)
    if not tf.config.list_logical_devices("GPU"):
        tf.config.experimental.enable_op_determinism()
    torch.manual_seed(seed)
    model = build_model(cfg)
    found = _find_resume(run_dir, cfg, model)
    init_record: dict[str, Any] = {}
    if found is None:
        init_record = load_init_weights(model, cfg.init, build_preprocessing(cfg), seed=seed,
                                        weights=init_weights_path(cfg), hint=weights_hint(cfg))
    from .loop import build_criterion

    base = build_train_dataset(cfg)
    trainer = KerasTrainer(cfg, model, strategy=strategy, criterion=build_criterion(cfg, base))
    start = 0
    state: dict[str, Any] = {"skipped": [], "best": None}
    if found is not None:
        ckpt_path, ckpt = found
        trainer.check_checkpoint_state(ckpt_path, ckpt)
        trainer.load_checkpoint_state(ckpt)
        init_record = dict(ckpt.get("init", {}))
        start = ckpt["iteration"]
        state["best"], state["skipped"] = ckpt.get("best"), list(ckpt.get("skipped", []))
        set_rng_state(ckpt["rng"][0], where=str(ckpt_path))

    loader, sampler = build_loader(cfg, base, rank=0, world=1, start_iter=start)
    logger = Logger(run_dir, start=start, total=max_iter, enabled=True, progress=cfg.progress,
                    tensorboard=cfg.tensorboard)
    if start:
        logger.write(f"resuming {run_dir} (Keras) at iteration {start} of {max_iter}")
    else:
        logger.write(f"training {cfg.name} in Keras {keras.__version__} / TensorFlow {tf.__version__}: {max_iter} "
                     f"iterations of {solver.batch_size} images ({solver.accum_steps} accumulation step(s) x "
                     f"{sampler.micro}, {trainer.replicas} replica(s))")
    framework = {"name": "keras", "keras": keras.__version__, "tensorflow": tf.__version__,
                 "replicas": trainer.replicas}
    d = Dist()
    device = torch.device("cpu")
    batches = iter(loader)
    t0 = time.time()
    for it in range(start, max_iter):
        lr = poly_lr(solver.base_lr, it, max_iter, solver.lr_power)
        micro = iteration_batches(batches, solver.accum_steps, it, logger, state["skipped"])
        trainer.criterion.set_iteration(it)  # the hard-pixel mining schedule's step
        loss = trainer.step(micro, lr)
        done = it + 1
        log = done % cfg.log_every == 0 or done == max_iter
        scalars: dict[str, Any] = {"loss": loss, "lr": lr}
        if log:
            scalars["sec_per_it"] = (time.time() - t0) / (done - start)
            scalars["skipped_samples"] = float(len(state["skipped"]))
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at iteration {done}; lower the learning rate")
        logger.step(done, scalars, log=log)
        if cfg.eval_every and (done % cfg.eval_every == 0 or done == max_iter):
            model.load_state_dict(trainer.state_dict())
            _evaluate(run_dir, done, model, cfg, init_record, d, device, state, logger)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < max_iter:
            _save(run_dir, done, trainer, cfg, init_record, state)
    logger.close()
    _save(run_dir, max_iter, trainer, cfg, init_record, state)
    final = run_dir / "final.pth"
    model.load_state_dict(trainer.state_dict())
    _write_weights(final, model, cfg, iteration=max_iter, processes=1, init_record=init_record,
                   framework=framework, best=state["best"],
                   skipped_samples={"count": len(state["skipped"]), "files": state["skipped"][:100]})
    save_keras(trainer.model, run_dir / "final.weights.h5")
    logger.write(f"wrote {final} and final.weights.h5 ({max_iter} iterations, {time.time() - t0:.0f} s this "
                 "session)")
    return final
