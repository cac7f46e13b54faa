"""Axis names, in one place: the mesh axes and the logical names of tensor dimensions.

    from videogen.parallel import axes
    nnx.with_partitioning(init, (axes.EMBED, axes.MLP))                      # a parameter
    sharding.constrain(x, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))  # an activation

Models name dimensions with these constants, never with string literals, so a typo is an
AttributeError at import rather than a dimension that silently falls out of the rules table.
`MeshConfig.rules` (videogen/parallel/mesh.py) maps every logical name below to mesh axes;
tests/parallel/test_mesh.py checks that the table holds exactly the names the models use.

Parameter names and activation names are kept apart (as in MaxText and MaxDiffusion) because
they shard differently: under FSDP a weight's model dimension is split over "fsdp" while the
activations' model dimension stays whole and their batch dimension is split instead.
"""

from __future__ import annotations

# Mesh axes, in mesh order (outermost, least communication first); see videogen/parallel/mesh.py.
DATA = "data"
FSDP = "fsdp"
SEQUENCE = "sequence"
TENSOR = "tensor"
MESH_AXES: tuple[str, ...] = (DATA, FSDP, SEQUENCE, TENSOR)

# Parameter dimensions.
EMBED = "embed"  # the model width: a transformer's residual stream, attention's channel side
MLP = "mlp"  # MLP hidden units and adaLN modulation outputs
HEADS = "heads"  # attention heads
KV = "kv"  # the per-head feature dimension
VOCAB = "vocab"  # rows of a token embedding table
LAYERS = "layers"  # the stacked-layer axis `nnx.vmap` adds to the blocks that `nnx.scan` runs
CONV_IN = "conv_in"  # input channels of a convolution or a pointwise projection
CONV_OUT = "conv_out"  # output channels of a convolution (and its bias)
NORM = "norm"  # per-channel norm scales of the convolutional models

# Activation dimensions. The batch shares its name with the loader's batches
# (`sharding.batch_sharding`): activations stay split the way the data arrives.
ACT_BATCH = "batch"
ACT_LENGTH = "activation_length"  # a token sequence (video patches or text tokens)
ACT_EMBED = "activation_embed"  # a token's width
ACT_HEADS = "activation_heads"  # attention heads of queries, keys and values
ACT_KV = "activation_kv"  # per-head features
ACT_MLP = "activation_mlp"  # MLP hidden units
ACT_FRAMES = "activation_frames"  # time of a feature map [B, T, H, W, C]
ACT_HEIGHT = "activation_height"
ACT_WIDTH = "activation_width"
ACT_CHANNELS = "activation_channels"

# The layouts the models constrain their activations to.
TOKENS: tuple[str, ...] = (ACT_BATCH, ACT_LENGTH, ACT_EMBED)  # [B, L, D]
TOKEN_HEADS: tuple[str, ...] = (ACT_BATCH, ACT_LENGTH, ACT_HEADS, ACT_KV)  # [B, L, N, H]
TOKEN_HIDDEN: tuple[str, ...] = (ACT_BATCH, ACT_LENGTH, ACT_MLP)  # [B, L, M]
FEATURE_MAP: tuple[str, ...] = (ACT_BATCH, ACT_FRAMES, ACT_HEIGHT, ACT_WIDTH,
                                ACT_CHANNELS)  # [B, T, H, W, C]
