"""Reading the distilled sets public codebases save, and writing archives back out.

One module per layout (``mtt_layout``, ``haba_official``, ``dc``, ``idc``, ``arrays``,
``ddranking``), a torch-free ``registry`` naming them, and ``build`` turning what a
reader found into an archive. Files are read with ``torch.load(weights_only=True)``,
safetensors or numpy without pickle only (``safe_load``): nothing in them is executed.
Layouts and what each cannot know: docs/interop.md.
"""
