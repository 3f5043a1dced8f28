"""Every user-visible string goes through tr() (QCoreApplication.translate, context "Processing"); ids never do."""

from __future__ import annotations

from typing import ClassVar

import pytest
from qgis.core import QgsApplication

pytestmark = pytest.mark.qgis
MARK = "«"


class MarkingTranslator:
    """Stands in for QCoreApplication: 'translates' by prefixing a mark and records the context."""

    contexts: ClassVar[set[str]] = set()

    @classmethod
    def translate(cls, context: str, text: str, *args) -> str:
        cls.contexts.add(context)
        return MARK + text


@pytest.fixture
def marked(monkeypatch, qgis_app):
    from bicorseg_qgis.algorithms import base

    monkeypatch.setattr(base, "QCoreApplication", MarkingTranslator)
    return QgsApplication.processingRegistry().providerById("bicorseg")


def test_names_help_parameters_and_outputs_are_translated(marked):
    assert marked.name().startswith(MARK)
    for registered in marked.algorithms():
        alg = registered.create()  # a fresh instance runs initAlgorithm under the marking translator
        assert alg.displayName().startswith(MARK), alg.id()
        assert alg.group().startswith(MARK), alg.id()
        assert alg.shortHelpString().startswith(MARK), alg.id()
        for parameter in alg.parameterDefinitions():
            assert parameter.description().startswith(MARK), (alg.id(), parameter.name())
        for output in alg.outputDefinitions():
            assert output.description().startswith(MARK), (alg.id(), output.name())
        # Ids, group ids and parameter names are a public interface and must never be translated.
        assert MARK not in alg.id() + alg.groupId()
        assert all(MARK not in p.name() for p in alg.parameterDefinitions())
    assert MarkingTranslator.contexts == {"Processing"}


def test_enum_static_strings_are_not_translated(marked):
    alg = marked.algorithm("segmentlandcover").create()
    assert alg.parameterDefinition("DEVICE").options() == ["auto", "cpu", "cuda"]
    assert alg.parameterDefinition("BACKEND").options() == ["auto", "onnxruntime", "torch"]


def test_error_messages_are_translated(marked):
    from bicorseg_qgis.algorithms.base import install_instructions

    assert install_instructions(["torch"]).startswith(MARK)
