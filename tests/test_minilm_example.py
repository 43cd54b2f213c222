"""The MiniLM example's corpus: pydoc pages rendered out of process, failures named, not hidden.

(The sentence splitting and the embeddings are tested in ``test_activations.py``.)
"""

import pytest

from softsae_lens.experiments.minilm import sentences
from softsae_lens.experiments.minilm.sentences import REFERENCE, documents, split_sentences


def test_documents_are_reference_topics_then_module_pages_without_machine_sections(
    monkeypatch,
):
    monkeypatch.setattr(sentences, "MODULES", ["json", "textwrap"])
    docs = documents(progress=False)
    library = [(source, text) for source, category, text in docs if category == "library"]
    assert [source for source, _ in library] == ["json", "textwrap"]
    assert all(category == REFERENCE for _, category, _ in docs[: -len(library)])
    assert len(docs) - len(library) > 50  # every pydoc topic
    for _, text in library:
        # The install path (FILE) and reprs of globals (DATA) depend on the machine.
        assert "\nFILE\n" not in text and "\nDATA\n" not in text and "\nNAME\n" in text
    texts = {s.text for s in split_sentences(docs) if s.source == "textwrap"}
    assert (
        "As with wrap(), tabs are expanded and other whitespace characters converted to space."
        in texts
    )


def test_a_module_that_cannot_be_rendered_is_named_in_a_warning(monkeypatch):
    monkeypatch.setattr(sentences, "MODULES", ["json", "no_such_module_for_minilm"])
    with pytest.warns(UserWarning, match=r"no_such_module_for_minilm \(ModuleNotFoundError"):
        docs = documents(progress=False)
    assert [source for source, category, _ in docs if category == "library"] == ["json"]
