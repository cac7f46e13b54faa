"""videogen/train/dit_stage.py: the diffusion stage's model, loss, frozen parts, data and samples.

Tiny sizes throughout: a 2x2x2 autoencoder with 4 latent channels on 5x16x16 clips (3x8x8
latents, 48 tokens), a width-32 one-block transformer and a width-16 text encoder. The autoencoder
stage's checkpoint is written directly from a randomly initialised model (no autoencoder training).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from data_pipelines import loader
from data_pipelines.loader import DataConfig
from data_pipelines.tokenizer import TokenizerConfig
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.config import to_config_dict
from videogen.diffusion.flow import FlowConfig
from videogen.diffusion.samplers import SamplerConfig
from videogen.evaluate import caption_use
from videogen.models.autoencoder import AutoencoderConfig
from videogen.generate import pipeline
from videogen.models import layers
from videogen.models import text_to_video
from videogen.models.dit import DiTConfig
from videogen.models.text_encoder import TextEncoderConfig
from videogen.parallel import mesh as mesh_lib
from videogen.train import config as configs
from videogen.train import dit_stage
from videogen.train import latent_cache
from videogen.train import metrics as metrics_lib
from videogen.train import stages as stages_lib
from videogen.train import train_state as train_state_lib
from videogen.train import trainer
from videogen.train.config import TrainConfig

AUTOENCODER = AutoencoderConfig(
    base_channels=8, channel_multipliers=(1, 1), num_res_blocks=1, spatial_downsample=(True,),
    temporal_downsample=(True,), latent_channels=4, middle_attention=False, attention_heads=1)
VOCAB_SIZE = 300
MAX_TOKENS = 24
TEXT_WIDTH = 16


def make_experiment(*, flow: FlowConfig = FlowConfig(), text_frozen: bool = False,
                    dit_in_channels: int = 4, text_vocab: int = VOCAB_SIZE,
                    **train) -> experiment_lib.Experiment:
  config = ml_collections.ConfigDict()
  config.name = "dit_stage_test"
  config.seed = 0
  config.stages = ("autoencoder", "dit")
  config.mesh = to_config_dict(mesh_lib.MeshConfig())
  config.data = to_config_dict(DataConfig(buckets=("5x16x16:8",), caption="brief"))
  config.tokenizer = to_config_dict(TokenizerConfig(vocab_size=VOCAB_SIZE, max_length=MAX_TOKENS,
                                                    num_train_captions=300))
  config.autoencoder = to_config_dict(AUTOENCODER)
  config.text_encoder = to_config_dict(TextEncoderConfig(
      vocab_size=text_vocab, max_length=MAX_TOKENS, width=TEXT_WIDTH, depth=1, num_heads=2,
      mlp_ratio=2.0, frozen=text_frozen, attention_backend="xla"))
  config.dit = to_config_dict(DiTConfig(
      width=32, depth=1, num_heads=2, in_channels=dit_in_channels, input_size=(3, 8, 8),
      context_dim=TEXT_WIDTH, pooled_dim=TEXT_WIDTH, frequency_dim=32, attention_backend="xla"))
  config.diffusion = to_config_dict(flow)
  config.sample = to_config_dict(SamplerConfig(method="euler", num_steps=2, guidance_scale=2.0))
  config.dit_stage = to_config_dict(configs.DiTStageConfig(
      eval_prompts=("a red circle", "a blue square"), eval_steps=2))
  config.train = ml_collections.ConfigDict()
  config.train.autoencoder = to_config_dict(TrainConfig(num_steps=5))
  config.train.dit = to_config_dict(TrainConfig(**{
      "num_steps": 2, "log_every": 1, "checkpoint_every": 2, "eval_every": 2,
      "async_checkpoints": False, "progress_bar": False, **train}))
  return experiment_lib.validate(config)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  experiment = make_experiment()
  return workdir_lib.load_or_train_tokenizer(experiment,
                                             str(tmp_path_factory.mktemp("tokenizer")))


def eager_model(stage: dit_stage.DiTStage, seed: int = 0) -> text_to_video.TextToVideoModel:
  with nnx.use_eager_sharding(False):
    return stage.create_model(nnx.Rngs(seed))


def loader_batch(experiment, tokenizer, step: int = 0) -> dict[str, jax.Array]:
  batches = loader.StepBatches(experiment.data, tokenizer=tokenizer, seed=experiment.seed)
  return {key: jnp.asarray(value) for key, value in batches(step).items() if key != "step"}


def latent_batch(experiment, tokenizer, step: int = 0) -> dict[str, jax.Array]:
  """A loader batch whose videos are replaced by random posterior means (as a latent cache holds
  them): the loss then skips the autoencoder, which keeps these tests cheap."""
  batch = loader_batch(experiment, tokenizer, step)
  shape = (batch["video"].shape[0], 3, 8, 8, AUTOENCODER.latent_channels)
  # Off-centre, so that there is something quick to learn (the mean velocity).
  batch["latents"] = 1.0 + 0.5 * jax.random.normal(jax.random.key(step), shape)
  del batch["video"]
  return batch


class RecordingDiT:
  """Stands in for the transformer: records its inputs and predicts `value` at latent frame 0
  and 0 elsewhere."""

  def __init__(self, config: DiTConfig, value: float = 0.0):
    self.config = config
    self.value = value
    self.seen: dict[str, jax.Array] = {}

  def __call__(self, latents, timesteps, context, context_mask, pooled):
    self.seen.update(latents=latents, timesteps=timesteps, context=context,
                     context_mask=context_mask, pooled=pooled)
    return jnp.zeros_like(latents).at[:, 0].set(self.value)


# ------------------------------------------------------------------------------------------------



def _initial_state_and_step(experiment):
  """The dit stage, its model's graph, initial train state and jitted train step, on one device."""
  stage = dit_stage.DiTStage(experiment)
  config = experiment.train["dit"]
  mesh = mesh_lib.create_mesh(experiment.mesh, jax.devices()[:1])
  tx = train_state_lib.make_optimizer(config)
  state = jax.jit(lambda: train_state_lib.init_train_state(stage, tx, seed=0))()
  graphdef, _, _ = train_state_lib.abstract_model(stage)
  step = jax.jit(train_state_lib.make_train_step(
      stage, graphdef, tx, config, mesh=mesh, rules=experiment.mesh.rules,
      sequence_parallel=experiment.mesh.sequence_parallel))
  return stage, graphdef, state, step

def test_configs_must_agree():
  with pytest.raises(ValueError, match=r"config.dit.in_channels \(8\) must equal "
                                       r"config.autoencoder.latent_channels \(4\)"):
    dit_stage.DiTStage(make_experiment(dit_in_channels=8))


@pytest.mark.parametrize("field, value, match", [
    ("eval_steps", 0, "eval_steps = 0 must be >= 1"),
    ("eval_caption_clips", -1, "eval_caption_clips = -1 must be >= 0"),
    ("eval_prompts", ("a red circle", " "), "holds an empty prompt")])
def test_bad_evaluation_settings_are_refused(field, value, match):
  with pytest.raises(ValueError, match=match):
    configs.DiTStageConfig(**{field: value})


@pytest.mark.parametrize("text_frozen", [False, True])
def test_trainable_parts(text_frozen):
  """The autoencoder is never trained; the text encoder only when it is not frozen."""
  stage = dit_stage.DiTStage(make_experiment(text_frozen=text_frozen))
  _, params, frozen = train_state_lib.abstract_model(stage)
  expected = {"dit"} if text_frozen else {"dit", "text_encoder"}
  assert set(params.keys()) == expected
  assert "autoencoder" in frozen
  assert ("text_encoder" in frozen) == text_frozen
  assert not any(path[0] == "autoencoder" for path, _ in nnx.to_flat_state(params))


@pytest.mark.parametrize("text_frozen", [False, True])
def test_the_stage_trains_the_model_generation_restores(text_frozen):
  """The stage's split (what its checkpoint stores as params / frozen) is the one
  `text_to_video.abstract_model` gives the generation pipeline to restore into."""
  experiment = make_experiment(text_frozen=text_frozen)
  stage_graph, stage_params, stage_frozen = train_state_lib.abstract_model(
      dit_stage.DiTStage(experiment))
  graph, params, frozen = text_to_video.abstract_model(
      experiment.autoencoder, experiment.text_encoder, experiment.dit)
  assert stage_graph == graph
  for ours, theirs in ((stage_params, params), (stage_frozen, frozen)):
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), ours) == jax.tree.map(
        lambda x: (x.shape, x.dtype), theirs)


def test_given_frames_are_excluded_from_the_loss(tokenizer):
  """With frame 0 always given clean, a wild prediction there costs nothing, and the model sees
  the clean latent at timestep 0 there."""
  always_first = FlowConfig(condition_probability=1.0, condition_weights=(1.0, 0, 0, 0, 0),
                            caption_dropout=0.0)
  never = FlowConfig(condition_probability=0.0, caption_dropout=0.0)
  losses = {}
  for name, flow in (("first", always_first), ("none", never)):
    experiment = make_experiment(flow=flow)
    stage = dit_stage.DiTStage(experiment)
    model = eager_model(stage)
    model.dit = recorder = RecordingDiT(experiment.dit, value=1e3)
    batch = latent_batch(experiment, tokenizer)
    losses[name], metrics = stage.loss(model, batch, jax.random.key(0), jnp.int32(0))
    if name == "first":
      clean = model.autoencoder.normalize_latents(batch["latents"])
      np.testing.assert_array_equal(recorder.seen["latents"][:, 0], clean[:, 0])
      np.testing.assert_array_equal(recorder.seen["timesteps"][:, 0], 0.0)
      assert np.all(np.asarray(recorder.seen["timesteps"][:, 1:]) > 0.0)
      assert float(metrics["given_frames"]) == pytest.approx(1 / 3)
  assert float(losses["first"]) < 10.0  # E|eps - x0|^2 over frames 1, 2 only
  assert float(losses["none"]) > 1e5  # the 1e3 prediction at frame 0 counts


@pytest.mark.parametrize("dropout", [0.0, 1.0])
def test_caption_dropout_gives_the_null_caption(tokenizer, dropout):
  """A dropped caption reaches the transformer exactly as the sampler's null caption does."""
  experiment = make_experiment(flow=FlowConfig(caption_dropout=dropout))
  stage = dit_stage.DiTStage(experiment)
  model = eager_model(stage)
  model.dit = recorder = RecordingDiT(experiment.dit)
  batch = latent_batch(experiment, tokenizer)
  _, metrics = stage.loss(model, batch, jax.random.key(1), jnp.int32(0))
  seen = recorder.seen
  assert float(metrics["captions_dropped"]) == dropout
  if dropout == 0.0:
    np.testing.assert_array_equal(seen["context_mask"], batch["token_mask"])
    assert float(jnp.abs(seen["pooled"]).max()) > 0.0
    return
  null_ids = jnp.full_like(batch["tokens"], tokenizer.pad_id)
  null_mask = jnp.zeros_like(batch["token_mask"])
  null_context, null_pooled = model.text_encoder(null_ids, null_mask)
  assert not np.any(np.asarray(seen["context_mask"]))
  np.testing.assert_array_equal(seen["context"], null_context)
  np.testing.assert_array_equal(seen["pooled"], null_pooled)
  np.testing.assert_array_equal(seen["pooled"], 0.0)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_steps_lower_the_loss_and_leave_the_autoencoder_alone(tokenizer, optimizer):
  """Twenty steps on one batch lower its loss (same noise and timesteps before and after).

  (The batch carries latents; the end-to-end test below encodes pixels.)
  """
  experiment = make_experiment(learning_rate=1e-2, warmup_steps=0, schedule="constant",
                               num_steps=20, optimizer=optimizer)
  config = experiment.train["dit"]
  stage, graphdef, state, step = _initial_state_and_step(experiment)
  batch = latent_batch(experiment, tokenizer)

  @jax.jit
  def fixed_loss(state):
    model = nnx.merge(graphdef, state.params, state.frozen)
    return stage.loss(model, batch, jax.random.key(3), jnp.int32(0))[0]

  before = float(fixed_loss(state))
  frozen_before = jax.tree.map(np.asarray, state.frozen)
  for _ in range(config.num_steps):
    state, metrics = step(state, batch)
  after = float(fixed_loss(state))
  assert np.isfinite(float(metrics["loss"]))
  assert after < 0.9 * before, (before, after)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.frozen),
               frozen_before)


def test_load_frozen_needs_a_trained_autoencoder(tmp_path):
  stage = dit_stage.DiTStage(make_experiment())
  with pytest.raises(FileNotFoundError, match="train the autoencoder first"):
    stage.load_frozen(nnx.State({}), str(tmp_path))


def test_text_encoder_must_hold_every_token_id(tmp_path, tokenizer):
  tokenizer.save(str(tmp_path / "tokenizer.model"))
  stage = dit_stage.DiTStage(make_experiment(text_vocab=tokenizer.vocab_size - 1))
  with pytest.raises(ValueError, match=f"vocab_size={tokenizer.vocab_size}"):
    stage.tokenizer(str(tmp_path))


def test_an_autoencoder_trained_with_another_architecture_is_refused(
    tmp_path, write_autoencoder_checkpoint):
  """Settings without parameters (the shortcuts) are checked against the saved config.

  A saved config from before the shortcuts existed (no such key) was trained without them.
  """
  experiment = make_experiment()
  mesh = mesh_lib.create_mesh(experiment.mesh, jax.devices()[:1])
  saved = to_config_dict(AUTOENCODER).to_dict()
  assert AUTOENCODER.shortcuts
  write_autoencoder_checkpoint(experiment, str(tmp_path / "same"), config={"autoencoder": saved})
  latent_cache.restore_autoencoder(experiment, str(tmp_path / "same"), mesh=mesh)
  # Latent scaling is chosen after training: a change there is no other architecture.
  write_autoencoder_checkpoint(experiment, str(tmp_path / "scaled"), config={
      "autoencoder": {**saved, "scale_factor": 0.25}})
  latent_cache.restore_autoencoder(experiment, str(tmp_path / "scaled"), mesh=mesh)
  for name, section in (("off", {**saved, "shortcuts": False}),
                        ("old", {k: v for k, v in saved.items() if k != "shortcuts"})):
    write_autoencoder_checkpoint(experiment, str(tmp_path / name),
                                 config={"autoencoder": section})
    with pytest.raises(workdir_lib.AutoencoderMismatchError, match=(
        "^the autoencoder checkpoint .* another architecture .*shortcuts: False -> True")):
      latent_cache.restore_autoencoder(experiment, str(tmp_path / name), mesh=mesh)


def test_evaluation_samples_what_the_generation_pipeline_gives(tmp_path, tokenizer,
                                                             monkeypatch):
  """The evaluation's sample of a prompt is the video `generate --seed=<eval_seed>
  --steps=<eval_steps>` makes from the same modules, at the stage's sample shape."""
  experiment = make_experiment()
  stage = dit_stage.DiTStage(experiment)
  model = eager_model(stage, seed=1)
  tokenizer.save(workdir_lib.tokenizer_path(str(tmp_path)))
  written = {}
  monkeypatch.setattr(dit_stage.video_io, "write_video",
                      lambda path, video, fps: written.setdefault(os.path.basename(path), video))
  monkeypatch.setattr(stage, "config", dataclasses.replace(stage.config, eval_caption_clips=0))
  scores = stage.evaluate(model, 3, str(tmp_path))
  assert set(scores) == {"sample_seconds"}
  generator = pipeline.Generator(
      autoencoder=model.autoencoder, text_encoder=model.text_encoder, dit=model.dit,
      tokenizer=tokenizer, flow_config=experiment.diffusion, sample_config=experiment.sample,
      progress=False)
  config = experiment.dit_stage
  for index, prompt in enumerate(config.eval_prompts):
    expected = generator.generate(prompt, frames=5, height=16, width=16, seed=config.eval_seed,
                                  steps=config.eval_steps)
    np.testing.assert_array_equal(written[f"{index:02d}.mp4"], expected)
  assert os.path.exists(tmp_path / "samples" / "dit_000003" / "contact_sheet.png")


@pytest.mark.parametrize("rank, warned", [(1.2, True), (6.0, False)])
def test_the_evaluation_warns_of_a_collapsed_text_encoder(tmp_path, tokenizer, monkeypatch,
                                                         caplog, rank, warned):
  stage = dit_stage.DiTStage(make_experiment())
  model = eager_model(stage, seed=1)
  tokenizer.save(workdir_lib.tokenizer_path(str(tmp_path)))
  monkeypatch.setattr(dit_stage.caption_use, "stage_scores",
                      lambda *args, **kwargs: {"text_token_rank": rank})
  with caplog.at_level(logging.WARNING):
    scores = stage.evaluate(model, 7, str(tmp_path))
  assert scores["text_token_rank"] == rank
  messages = [record.getMessage() for record in caplog.records
              if "caption tokens span" in record.getMessage()]
  expected = [f"dit stage, step 7: {caption_use.collapse_warning(rank)}"] if warned else []
  assert messages == expected


def test_an_autoencoder_checkpoint_lacking_parameters_is_refused(
    tmp_path, write_autoencoder_checkpoint):
  """A checkpoint without the discriminator the config asks for: named, not restored half."""
  experiment = make_experiment()
  write_autoencoder_checkpoint(experiment, str(tmp_path))
  with_discriminator = dataclasses.replace(experiment, autoencoder_loss=dataclasses.replace(
      experiment.autoencoder_loss, discriminator=True))
  mesh = mesh_lib.create_mesh(experiment.mesh, jax.devices()[:1])
  with pytest.raises(ValueError, match=r"lacks \d+ parameter\(s\) .*\['discriminator'\]"):
    latent_cache.restore_autoencoder(with_discriminator, str(tmp_path), mesh=mesh)


def test_trains_with_the_trainer_from_a_frozen_autoencoder(tmp_path, devices,
                                                          write_autoencoder_checkpoint):
  """Two steps on 8 devices: the autoencoder stage's EMA weights are loaded and stay frozen, the
  tokenizer asset, metrics and evaluation samples are written."""
  experiment = make_experiment()
  workdir = str(tmp_path)
  autoencoder_params = nnx.state(
      write_autoencoder_checkpoint(experiment, workdir).autoencoder)
  stage = stages_lib.make_stage("dit", experiment)
  mesh = mesh_lib.create_mesh(experiment.mesh, devices)
  result = trainer.train_stage(stage, experiment, workdir, mesh=mesh)

  assert result.status == "done" and result.step == 2
  jax.tree.map(np.testing.assert_array_equal,
               jax.tree.map(np.asarray, result.state.frozen["autoencoder"]),
               jax.tree.map(np.asarray, autoencoder_params))
  assert os.path.exists(os.path.join(workdir, "tokenizer.model"))
  rows = [row for row in metrics_lib.read_metrics(workdir, "dit") if "loss" in row]
  assert [row["step"] for row in rows] == [1, 2]
  for row in rows:
    for key in ("loss", "latent_std", "given_frames", "captions_dropped", "loss_low_noise",
                "loss_high_noise"):
      assert np.isfinite(row[key]), (key, row)
  # The evaluation's caption win rates (videogen.evaluate.caption_use), on the world's clips.
  [evaluation] = [row for row in metrics_lib.read_metrics(workdir, "dit")
                  if "eval/sample_seconds" in row]
  wins = {k: v for k, v in evaluation.items() if k.startswith("eval/caption_win_")}
  assert {"eval/caption_win_t2v_color", "eval/caption_win_first_shape",
          "eval/caption_win_t2v_caption"} <= set(wins)
  assert all(0.0 <= v <= 1.0 for v in wins.values()), wins
  gaps = {k: v for k, v in evaluation.items() if k.startswith("eval/caption_gap_")}
  assert {k.replace("_gap_", "_win_") for k in gaps} == set(wins)
  assert all(np.isfinite(v) for v in gaps.values()), gaps
  assert 1.0 <= evaluation["eval/text_token_rank"] <= TEXT_WIDTH
  samples = os.path.join(workdir, "samples", "dit_000002")
  assert sorted(os.listdir(samples)) == ["00.gif", "00.mp4", "01.gif", "01.mp4",
                                          "contact_sheet.png", "prompts.txt"]
  with open(os.path.join(samples, "prompts.txt")) as f:
    assert f.read() == "00 a red circle\n01 a blue square\n"


def test_muon_takes_the_hidden_kernels_and_leaves_the_models_edges_to_adam():
  stage = dit_stage.DiTStage(make_experiment(optimizer="muon"))
  _, params, _ = train_state_lib.abstract_model(stage)
  dims = train_state_lib.muon_dimensions(params)
  leaves = jax.tree_util.tree_flatten_with_path(
      dims, is_leaf=lambda x: x is None or isinstance(x, optax.contrib.MuonDimensionNumbers))[0]
  muon = {"/".join(str(k.key) for k in path) for path, dim in leaves if dim is not None}
  assert {"dit/blocks/self_attention/query/kernel", "dit/blocks/self_attention/output/kernel",
          "dit/blocks/cross_attention/key/kernel", "dit/blocks/mlp/up/kernel",
          "dit/blocks/mlp/down/kernel", "dit/blocks/modulation/linear/kernel",
          "text_encoder/blocks/0/mlp/up/kernel"} <= muon
  for edge in ("dit/patch_embed/kernel", "dit/time_embed/linear_in/kernel",
               "dit/final_layer/linear/kernel", "text_encoder/embedding",
               "text_encoder/positions"):
    assert edge not in muon
  assert all(path.endswith("kernel") for path in muon)


def test_muon_state_shards_and_resumes_exactly(tmp_path, devices, write_autoencoder_checkpoint):
  """Muon's state (masked where Adam trains) is placed on a 2x2x2 mesh, saved and restored: a
  run resumed from step 1 logs the step-2 loss of the uninterrupted run."""
  experiment = make_experiment(optimizer="muon", checkpoint_every=1, keep_checkpoints=0,
                               eval_every=0)
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(data=2, fsdp=2, tensor=2), devices)
  losses = []
  for attempt in range(2):
    workdir = str(tmp_path / str(attempt))
    write_autoencoder_checkpoint(experiment, workdir)
    if attempt:  # the first run's step-1 checkpoint, then resume
      shutil.copytree(tmp_path / "0" / "checkpoints" / "dit" / "1",
                      tmp_path / "1" / "checkpoints" / "dit" / "1")
      shutil.copy(tmp_path / "0" / "tokenizer.model", tmp_path / "1" / "tokenizer.model")
    stage = stages_lib.make_stage("dit", experiment)
    result = trainer.train_stage(stage, experiment, workdir, mesh=mesh)
    assert result.status == "done" and result.step == 2
    losses.append({row["step"]: row["loss"] for row in metrics_lib.read_metrics(workdir, "dit")
                   if "loss" in row})
  assert sorted(losses[1]) == [2]  # resumed: only step 2 was trained again
  assert losses[1][2] == losses[0][2]


# -- recipe options of the objective (each off by default) --------------------------------------

def test_the_given_first_frame_at_high_noise_gets_no_loss(tokenizer):
  """First frame always given, the rest at t >= 0.8, with every loss option on: a wild prediction
  at the given frame costs nothing in any term."""
  flow = FlowConfig(condition_probability=1.0, condition_weights=(1.0, 0, 0, 0, 0),
                    condition_min_time=0.8, caption_dropout=0.0, weighting="min_snr",
                    frame_difference_weight=1.0)
  experiment = make_experiment(flow=flow)
  stage = dit_stage.DiTStage(experiment)
  model = eager_model(stage)
  batch = latent_batch(experiment, tokenizer)
  losses = {}
  for value in (0.0, 1e3):
    model.dit = recorder = RecordingDiT(experiment.dit, value=value)
    losses[value], metrics = stage.loss(model, batch, jax.random.key(0), jnp.int32(0))
    assert set(metrics) >= {"loss_flow", "loss_frame_difference"}
  np.testing.assert_array_equal(recorder.seen["timesteps"][:, 0], 0.0)
  assert np.all(np.asarray(recorder.seen["timesteps"][:, 1:]) >= 0.8)
  assert float(losses[1e3]) == float(losses[0.0]) > 0.0


@pytest.mark.parametrize("weighting, difference", [("min_snr", 0.0), ("none", 0.5)])
def test_loss_options_add_to_the_same_draw_and_log_the_plain_loss(tokenizer, weighting,
                                                                  difference):
  """The options change the loss but not the draw: loss_flow is the default loss exactly."""
  batch = None
  results = {}
  for name, flow in (("plain", FlowConfig()),
                     ("option", FlowConfig(weighting=weighting,
                                           frame_difference_weight=difference))):
    experiment = make_experiment(flow=flow)
    stage = dit_stage.DiTStage(experiment)
    model = eager_model(stage, seed=1)
    model.dit = RecordingDiT(experiment.dit, value=2.0)
    batch = latent_batch(experiment, tokenizer) if batch is None else batch
    results[name] = stage.loss(model, batch, jax.random.key(2), jnp.int32(0))
  plain, plain_metrics = results["plain"]
  loss, metrics = results["option"]
  assert "loss_flow" not in plain_metrics and "loss_frame_difference" not in plain_metrics
  assert float(metrics["loss_flow"]) == float(plain)
  if difference:
    assert float(metrics["loss_frame_difference"]) > 0.0
    assert float(loss) == pytest.approx(
        float(plain) + difference * float(metrics["loss_frame_difference"]), rel=1e-6)
  else:
    assert float(loss) < float(plain)  # every min-SNR weight is below 1


def test_a_few_steps_train_with_every_recipe_option_on(tokenizer):
  """Diffusion forcing, the first frame given at high noise, min-SNR weighting and the frame
  difference term at once (one compile: each is its own branch of the same loss)."""
  flow = FlowConfig(frame_noise_prob=0.5, condition_probability=0.5,
                    condition_weights=(1.0, 0, 0, 0, 0), condition_min_time=0.8,
                    weighting="min_snr", frame_difference_weight=0.5)
  experiment = make_experiment(flow=flow, learning_rate=1e-2, warmup_steps=0,
                               schedule="constant", num_steps=2)
  config = experiment.train["dit"]
  _, _, state, step = _initial_state_and_step(experiment)
  before = jax.tree.map(np.asarray, state.params)
  for index in range(config.num_steps):
    state, metrics = step(state, latent_batch(experiment, tokenizer, index))
    assert np.isfinite(float(metrics["loss"])), index
  assert 0.0 < float(metrics["given_frames"]) < 1.0
  assert float(metrics["loss_frame_difference"]) > 0.0
  assert float(metrics["loss"]) != float(metrics["loss_flow"])
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                                       state.params, before))
  assert max(moved) > 0.0


class KeptTargetDiT:
  """Stands in for the transformer in masked training: for clean latents that are `clean`
  everywhere, x_t = (1 - t) clean + t eps, so it knows the velocity eps - clean of every token
  and returns that of the tokens it is asked to keep (shifted by `offset` frames, to show what a
  misaligned target would cost)."""

  def __init__(self, config: DiTConfig, clean: jax.Array, offset: int = 0):
    self.config = config
    self.clean = clean
    self.offset = offset
    self.keep = None

  def kept_velocity(self, latents, timesteps, context, context_mask, pooled, *, keep):
    self.keep = keep
    t = timesteps[:, :, None, None, None]
    velocity = (latents - (1.0 - t) * self.clean) / t - self.clean
    velocity = jnp.roll(velocity, self.offset, axis=1)
    return layers.gather_tokens(layers.patchify(velocity, self.config.patch_size), keep)


def test_masked_training_counts_the_kept_tokens_against_their_own_targets(tokenizer):
  """With mask_ratio 0.5 the transformer is asked for half of each frame's tokens, and the loss
  compares each with its own target: a stand-in that knows every token's velocity scores 0,
  and the same stand-in one frame off does not."""
  flow = FlowConfig(mask_ratio=0.5, condition_probability=0.0, logit_mean=3.0)
  experiment = make_experiment(flow=flow)
  stage = dit_stage.DiTStage(experiment)
  model = eager_model(stage)
  batch = latent_batch(experiment, tokenizer)
  batch["latents"] = jnp.zeros_like(batch["latents"])
  clean = dit_stage.clean_latents(model.autoencoder, batch["latents"][:1, :1], None, None)
  losses = {}
  for offset in (0, 1):
    model.dit = standin = KeptTargetDiT(experiment.dit, clean, offset)
    losses[offset], metrics = stage.loss(model, batch, jax.random.key(0), jnp.int32(0))
    assert float(metrics["loss_high_noise"]) == pytest.approx(float(losses[offset]), rel=1e-5)
  assert standin.keep.shape == (8, 3, 8)  # 3x4x4 tokens, half of each frame's 16
  assert float(losses[0]) < 1e-6 < 0.1 < float(losses[1])


def test_masked_training_steps_cost_less_and_train(tokenizer):
  """The compiled masked step does about half the flops of the unmasked one (the transformer
  is most of the step), and it trains: a few steps move the parameters with a finite loss."""
  flops = {}
  for ratio in (0.0, 0.5):
    experiment = make_experiment(flow=FlowConfig(mask_ratio=ratio), learning_rate=1e-2,
                                 warmup_steps=0, schedule="constant", num_steps=2)
    _, _, state, step = _initial_state_and_step(experiment)
    batch = latent_batch(experiment, tokenizer)
    flops[ratio] = step.lower(state, batch).compile().cost_analysis()["flops"]
  assert 0.4 < flops[0.5] / flops[0.0] < 0.75, flops
  before = jax.tree.map(np.asarray, state.params)
  for index in range(2):
    state, metrics = step(state, latent_batch(experiment, tokenizer, index))
    assert np.isfinite(float(metrics["loss"])), index
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                                       state.params, before))
  assert max(moved) > 0.0


def test_the_pyramid_schedule_samples_through_the_generation_pipeline(tokenizer):
  experiment = make_experiment()
  stage = dit_stage.DiTStage(experiment)
  model = eager_model(stage, seed=1)
  # Off the zero initialisation, so that the velocity depends on the timestep.
  params = nnx.state(model.dit, nnx.Param)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(5), len(leaves))
  nnx.update(model.dit, jax.tree.unflatten(treedef, [
      leaf + 0.2 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)]))
  videos = {}
  for schedule in ("together", "pyramid"):
    generator = pipeline.Generator(
        autoencoder=model.autoencoder, text_encoder=model.text_encoder, dit=model.dit,
        tokenizer=tokenizer, flow_config=experiment.diffusion,
        sample_config=dataclasses.replace(experiment.sample, frame_schedule=schedule,
                                          frame_lag=0.5), progress=False)
    videos[schedule] = np.asarray(generator.generate("a red circle", frames=5, height=16,
                                                     width=16, seed=0, steps=2))
  assert videos["pyramid"].shape == videos["together"].shape
  assert np.any(videos["pyramid"] != videos["together"])


# -- the given-frame phase (config.train.dit.phase_steps) ----------------------------------------

def test_the_phase_switches_the_frame_conditioning_at_its_first_step(tokenizer):
  """Before the phase no frame is given (config.diffusion); from its first step on, the draw is
  exactly that of a stage whose config.diffusion holds the phase's settings."""
  phase = {"phase_condition_probability": 1.0, "phase_condition_logit_mean": 4.0,
           "phase_condition_logit_std": 0.3}
  flow = FlowConfig(condition_probability=0.0)
  experiment = make_experiment(flow=flow, num_steps=10, phase_steps=4, phase_learning_rate=1e-4)
  experiment = dataclasses.replace(
      experiment, dit_stage=dataclasses.replace(experiment.dit_stage, **phase))
  stage = dit_stage.DiTStage(experiment)
  assert stage.phase_start == 6
  reference = dit_stage.DiTStage(dataclasses.replace(experiment, diffusion=dataclasses.replace(
      flow, condition_probability=1.0, condition_weights=(1.0, 0.0, 0.0, 0.0, 0.0),
      condition_logit_mean=4.0, condition_logit_std=0.3)))
  batch = latent_batch(experiment, tokenizer)
  model = eager_model(stage)

  def seen_timesteps(stage, step):
    model.dit = recorder = RecordingDiT(experiment.dit)
    stage.loss(model, batch, jax.random.key(0), jnp.int32(step))
    return np.asarray(recorder.seen["timesteps"])

  before = seen_timesteps(stage, 5)
  assert np.all(before > 0.0)  # no frame given
  for step in (6, 9):
    during = seen_timesteps(stage, step)
    np.testing.assert_array_equal(during, seen_timesteps(reference, step))
    np.testing.assert_array_equal(during[:, 0], 0.0)  # the first frame given, every clip
    assert np.all(during[:, 1:] > 0.9)  # the rest near pure noise
  # Without a phase the stage draws as before, whatever the step.
  plain = dit_stage.DiTStage(make_experiment(flow=flow, num_steps=10))
  assert plain.phase_start is None
  np.testing.assert_array_equal(seen_timesteps(plain, 9), before)


def test_phase_settings_that_make_no_conditioning_are_refused():
  experiment = make_experiment(num_steps=10, phase_steps=4, phase_learning_rate=1e-4)
  experiment = dataclasses.replace(experiment, dit_stage=dataclasses.replace(
      experiment.dit_stage, phase_condition_weights=(1.0, 0.0)))
  with pytest.raises(ValueError, match=r"config.dit_stage.phase_\*: condition_weights"):
    dit_stage.DiTStage(experiment)


def test_a_run_with_the_phase_is_the_run_resumed_into_it(tmp_path, write_autoencoder_checkpoint):
  """One run of 4 steps whose last 2 are the phase ends on the parameters, optimizer state and
  EMA of 2 plain steps resumed for 2 more under the phase's settings (constant learning rate,
  first frames given at high noise): the way the phase was first trained, two commands."""
  phase = {"condition_probability": 0.9, "condition_weights": (1.0, 0.0, 0.0, 0.0, 0.0),
           "condition_logit_mean": 4.0, "condition_logit_std": 0.3}
  common = {"optimizer": "muon", "checkpoint_every": 2, "keep_checkpoints": 0, "eval_every": 0,
            "warmup_steps": 1}
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(), jax.devices()[:1])
  one = make_experiment(num_steps=4, phase_steps=2, phase_learning_rate=5e-4, **common)
  base = make_experiment(num_steps=2, **common)
  resumed = make_experiment(flow=FlowConfig(**phase), num_steps=4, schedule="constant",
                            learning_rate=5e-4, **{**common, "warmup_steps": 0})
  states = []
  for name, runs in (("one", [one]), ("two", [base, resumed])):
    workdir = str(tmp_path / name)
    write_autoencoder_checkpoint(one, workdir)
    for experiment in runs:
      result = trainer.train_stage(stages_lib.make_stage("dit", experiment), experiment,
                                   workdir, mesh=mesh, allow_config_change=True)
      assert result.status == "done"
    assert result.step == 4
    states.append(jax.tree.map(np.asarray, (result.state.params, result.state.ema_params,
                                            result.state.opt_state)))
    rates = [row["learning_rate"] for row in metrics_lib.read_metrics(workdir, "dit")
             if "loss" in row]
    np.testing.assert_allclose(rates[-2:], 5e-4)
  jax.tree.map(np.testing.assert_array_equal, *states)
