"""The device mesh of a run, built from `config.mesh`.

    mesh = create_mesh(parse(MeshConfig, config.mesh, "config.mesh"))

The mesh has four named axes, ordered from the least to the most communication-hungry:

  data      pure data parallelism: parameters replicated, the batch split.
  fsdp      fully sharded data parallelism: the batch split and parameters/optimizer state sharded
            (gathered layer by layer inside the step by XLA).
  sequence  sequence (context) parallelism: a transformer's tokens split, attention computed with
            them split by `sequence_parallel` ("ulysses" or "ring", see
            `videogen.parallel.sequence`); size 1 by default.
  tensor    tensor (model) parallelism: MLP hidden units and attention heads split.

Each axis has an ICI size (devices within one slice / host group, joined by the fast interconnect)
and a DCN size (number of slices joined by the data-centre network); the mesh axis size is their
product. One ICI size may be -1, filled from the device count. Which tensor dimension goes to which
mesh axis is not decided here but by the table `MeshConfig.rules` of logical axis names (see
`videogen.parallel.sharding`), so changing the parallelism of a run is a config edit only:

    --config.mesh.data=2 --config.mesh.fsdp=4
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils

from videogen.parallel import axes

# Mesh axis names, in mesh order (outermost, least communication first).
AXES: tuple[str, ...] = axes.MESH_AXES

# How attention splits its tokens over "sequence" (`videogen.parallel.sequence`): "ulysses"
# all-to-all from tokens to heads and back, "ring" passes key/value blocks round the devices,
# "auto" takes Ulysses where the heads divide evenly and the ring elsewhere.
SEQUENCE_PARALLEL: tuple[str, ...] = ("auto", "ulysses", "ring")

# Logical axis name -> mesh axes it is split over ("()" = replicated). Every name a model gives a
# parameter (`nnx.with_partitioning(init, (axes.EMBED, axes.MLP))`) or an activation
# (`sharding.constrain(x, axes.TOKENS)`) has a rule, and no other name does
# (tests/parallel/test_mesh.py checks both).
DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    # Dense weights: FSDP shards the model dimension, tensor parallelism the wide dimension.
    axes.EMBED: (axes.FSDP,),
    axes.MLP: (axes.TENSOR,),
    axes.HEADS: (axes.TENSOR,),
    axes.KV: (),
    axes.VOCAB: (axes.TENSOR,),
    axes.LAYERS: (),
    # Convolutions (the autoencoder, the discriminator): FSDP over output channels.
    axes.CONV_IN: (),
    axes.CONV_OUT: (axes.FSDP,),
    axes.NORM: (),
    # Activations: the batch split as the data is (the loader's batches use this rule too),
    # tokens over "sequence", attention heads and MLP hidden units over "tensor" (the Megatron
    # layout), the rest whole.
    axes.ACT_BATCH: (axes.DATA, axes.FSDP),
    axes.ACT_LENGTH: (axes.SEQUENCE,),
    axes.ACT_EMBED: (),
    axes.ACT_HEADS: (axes.TENSOR,),
    axes.ACT_KV: (),
    axes.ACT_MLP: (axes.TENSOR,),
    axes.ACT_FRAMES: (),
    axes.ACT_HEIGHT: (),
    axes.ACT_WIDTH: (),
    axes.ACT_CHANNELS: (),
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh axis sizes and the logical-axis rules (`config.mesh`).

  Attributes:
    data, fsdp, sequence, tensor: ICI size of each mesh axis; one may be -1 (filled from the
      number of devices per slice).
    dcn_data, dcn_fsdp, dcn_sequence, dcn_tensor: number of slices (or processes, where devices
      have no slice index) along each axis; their product is the number of slices.
    rules: logical axis name -> tuple of mesh axes it is split over; () replicates it.
    sequence_parallel: how attention splits tokens over the "sequence" axis when it is larger
      than 1: one of `SEQUENCE_PARALLEL`.
  """
  data: int = -1
  fsdp: int = 1
  sequence: int = 1
  tensor: int = 1
  dcn_data: int = 1
  dcn_fsdp: int = 1
  dcn_sequence: int = 1
  dcn_tensor: int = 1
  rules: dict[str, tuple[str, ...]] = dataclasses.field(
      default_factory=lambda: dict(DEFAULT_RULES))
  sequence_parallel: Literal["auto", "ulysses", "ring"] = "auto"

  def __post_init__(self):
    if self.sequence_parallel not in SEQUENCE_PARALLEL:
      raise ValueError(f"mesh.sequence_parallel = {self.sequence_parallel!r}; choose one of "
                       f"{', '.join(SEQUENCE_PARALLEL)}")
    for name, value in self.ici_shape + self.dcn_shape:
      if value == 0 or value < -1:
        raise ValueError(f"mesh.{name} = {value}: give a positive size, or -1 to fill it from "
                         f"the device count")
    for shape, what in ((self.ici_shape, "data, fsdp, sequence, tensor"),
                        (self.dcn_shape, "dcn_data, dcn_fsdp, dcn_sequence, dcn_tensor")):
      if sum(value == -1 for _, value in shape) > 1:
        raise ValueError(f"at most one of mesh.{{{what}}} may be -1; got "
                         f"{dict(shape)}")
    for logical, mesh_axes in self.rules.items():
      unknown = [axis for axis in mesh_axes if axis not in AXES]
      if unknown:
        raise ValueError(f"mesh.rules.{logical} = {mesh_axes} names unknown mesh axes {unknown}; "
                         f"the mesh axes are {AXES}")

  @property
  def ici_shape(self) -> tuple[tuple[str, int], ...]:
    return tuple((axis, getattr(self, axis)) for axis in AXES)

  @property
  def dcn_shape(self) -> tuple[tuple[str, int], ...]:
    return tuple((f"dcn_{axis}", getattr(self, f"dcn_{axis}")) for axis in AXES)


class MeshShapeError(ValueError):
  """config.mesh does not fit the devices: its sizes do not multiply to the device (or slice)
  count."""


def _fill(sizes: Sequence[int], total: int, what: str) -> tuple[int, ...]:
  """Replaces the one -1 in `sizes` so that their product is `total`."""
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if total % known:
      raise MeshShapeError(f"cannot fill the -1 in the {what} sizes {tuple(sizes)}: {total} is "
                           f"not divisible by {known}; change config.mesh")
    sizes = tuple(total // known if s == -1 else s for s in sizes)
  if math.prod(sizes) != total:
    raise MeshShapeError(f"the {what} sizes {dict(zip(AXES, sizes))} multiply to "
                         f"{math.prod(sizes)} but there are {total} {what} units; change "
                         f"config.mesh so that the product is {total} (or set one axis to -1)")
  return tuple(sizes)


def mesh_shape(config: MeshConfig, num_devices: int,
               num_slices: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Returns (ICI sizes, DCN sizes) per mesh axis, with the -1 entries filled.

  Args:
    config: the mesh config.
    num_devices: total number of devices.
    num_slices: number of slices (DCN granules) the devices form.

  Raises:
    MeshShapeError: the sizes do not multiply to the device or slice count.
  """
  dcn = _fill([size for _, size in config.dcn_shape], num_slices, "slice (DCN)")
  if num_devices % math.prod(dcn):
    raise MeshShapeError(f"{num_devices} devices cannot be split into {math.prod(dcn)} slices; "
                         f"change config.mesh.dcn_*")
  ici = _fill([size for _, size in config.ici_shape], num_devices // math.prod(dcn),
              "device-per-slice (ICI)")
  return ici, dcn


def create_mesh(config: MeshConfig,
                devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """Builds the mesh over `devices` (default: all devices of all processes).

  The axes are `AxisType.Auto`: the train step is a classic `jax.jit` with explicit in/out
  shardings, and XLA's sharding propagation (GSPMD) chooses the layout of every intermediate.
  `jax.make_mesh` now defaults to `Explicit` axes, under which a matmul that contracts a sharded
  dimension (every FSDP or tensor-parallel layer) is an error until each op is given an
  `out_sharding`; the model code here carries logical names on parameters only, so Auto is the mode
  that lets the same model run under any mesh from the config.
  """
  devices = list(jax.devices() if devices is None else devices)
  dcn_requested = math.prod(size for _, size in config.dcn_shape if size != -1)
  has_dcn = dcn_requested > 1 or any(size == -1 for _, size in config.dcn_shape)
  if has_dcn:
    # Slices are the DCN granules where the platform knows them (TPU); elsewhere processes are.
    process_is_granule = getattr(devices[0], "slice_index", None) is None
    key = (lambda d: d.process_index) if process_is_granule else (lambda d: d.slice_index)
    num_slices = len({key(d) for d in devices})
  else:
    process_is_granule, num_slices = True, 1
  ici, dcn = mesh_shape(config, len(devices), num_slices)
  if num_slices > 1:
    device_array = mesh_utils.create_hybrid_device_mesh(
        ici, dcn, devices, process_is_granule=process_is_granule, allow_split_physical_axes=True)
  else:
    device_array = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
  return jax.sharding.Mesh(np.asarray(device_array), AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def process_local_mesh(config: MeshConfig) -> jax.sharding.Mesh:
  """A mesh of this process's devices alone, with `config`'s rules, the weights and the batch
  split over them (FSDP): for work one process does on its own in a multi-process run (sampling
  the gallery, encoding its steps of the latent cache), where a mesh over every process would
  make its collectives wait for processes that do other work."""
  local = MeshConfig(data=1, fsdp=-1, rules=config.rules,
                     sequence_parallel=config.sequence_parallel)
  return create_mesh(local, jax.local_devices())


def describe(mesh: jax.sharding.Mesh) -> str:
  """"data=2 fsdp=4 sequence=1 tensor=1 (8 devices, 1 process)" for logs."""
  sizes = " ".join(f"{name}={size}" for name, size in mesh.shape.items())
  processes = len({d.process_index for d in mesh.devices.flat})
  return f"{sizes} ({mesh.devices.size} devices, {processes} process{'es' * (processes > 1)})"
