"""nuclei's napari plugin: the lab's loop in the viewer (segment, correct and keep, fine-tune, label next).

Installed with ``pip install 'nuclei[viewer]'``; napari lists it under Plugins > nuclei (`napari.yaml`). The
widgets are in `widgets` (Qt), the work they run in `loop` (no Qt: testable and scriptable without a viewer).
"""
