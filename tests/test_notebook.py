"""notebooks/quickstart.ipynb runs top to bottom on CPU (executed with nbclient, as CI does) and draws its plot."""

import os
from pathlib import Path

import nbclient
import nbformat

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(monkeypatch):
    # the kernel starts in notebooks/: make this checkout importable there too (a pip install needs nothing)
    root = str(NOTEBOOK.parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook unexecuted"
    assert "google.colab" in nb.cells[1].source  # the first code cell installs the package in Colab
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "QuarkW4A4MXFP4" in text and "greedy:" in text and "relative error of the quantized block" in text
    assert "-> decode: 'Once upon a time'" in text and "text out: '" in text and "streamed: " in text  # text I/O
    assert "JAX-quantized greedy:" in text and "input_scale rel. diff" in text  # section 5 (quark_jax.ptq)
    assert any(o.output_type == "display_data" and "image/png" in o.data for o in outputs)
    # the plot covers every scheme of the fixtures (the notebook runs inside the repository here)
    assert text.count(" mean ") == 10
