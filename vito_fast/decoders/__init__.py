"""Video decoders behind one contract and the choice among them on the user's own machine.

``video_decoders``: the contract (frame k = the k-th frame shown, dense RGB as players show it) and
the decoders (PyAV, DALI, PyNvVideoCodec, torchcodec), each able to say why it cannot run here;
``choice``: which one a run uses, by verification against PyAV and measurement, cached;
``trial``: one decoder's trial in a process of its own (``python -m vito_fast.decoders.trial``).
Beside ``data`` (layer 3): the loader uses them, they use its video reader and settings.
"""
