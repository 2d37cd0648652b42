"""The paper's five networks as plain nn.Modules, built by name; this package imports nothing else of fastzhang.

registry.py lists the models and their facts (builder, default lr, convolutional
or not, Table 1's parameter count, display name) without importing torch;
build.py builds one by name (`build_model(name, num_classes, seed)`: the same
initial weights for the same seed on every machine, the caller's random state
untouched); measure.py counts trainable parameters and forward FLOPs. Each
network takes a float [B, 3, 28, 28] batch (NCHW or channels_last) and returns
[B, num_classes] logits.

Nothing is imported here, so `import fastzhang.models.registry` stays free of torch.
"""
