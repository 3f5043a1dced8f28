"""The provider and its algorithms load in real QGIS with the frozen ids, parameters and enum strings."""

from __future__ import annotations

import pytest
from qgis.core import QgsApplication, QgsProcessingParameterEnum

pytestmark = pytest.mark.qgis

FROZEN_SEGMENT_PARAMETERS = [
    "INPUT", "MODEL", "DEVICE", "BACKEND", "BANDS", "EXTENT", "MASK",
    "TILE_SIZE", "OVERLAP", "BATCH_SIZE", "OUTPUT", "HEATMAPS",
]  # fmt: skip


def test_provider_registers_the_frozen_algorithm_ids(provider):
    ids = sorted(alg.id() for alg in provider.algorithms())
    assert ids == [
        "bicorseg:diagnostics",
        "bicorseg:evaluatesegmentation",
        "bicorseg:exportmodel",
        "bicorseg:exporttrainingdata",
        "bicorseg:installdependencies",
        "bicorseg:segmentlandcover",
        "bicorseg:trainmodel",
    ]
    assert not provider.icon().isNull()


def test_training_parameters_match_the_design(qgis_app):
    train = QgsApplication.processingRegistry().algorithmById("bicorseg:trainmodel")
    assert [p.name() for p in train.parameterDefinitions()] == [
        "INPUT", "LABELS", "CLASS_FIELD", "VALIDATION", "LABELED_AREA", "BACKGROUND_CLASS", "BASE_MODEL",
        "ARCHITECTURE", "MINUTES", "TILE_SIZE", "DEVICE", "SEGMENT_INPUT", "OUTPUT_MODEL", "REPORT", "OUTPUT",
    ]  # fmt: skip
    for name, options, default in (("ARCHITECTURE", ["base_model", "bicorseg_small", "hi_resnet_small", "bicorseg",
                                                     "hi_resnet"], "base_model"),
                                   ("DEVICE", ["auto", "cpu", "cuda"], "auto")):  # fmt: skip
        param = train.parameterDefinition(name)
        assert param.usesStaticStrings() and param.options() == options and param.defaultValue() == default
    for optional in ("CLASS_FIELD", "VALIDATION", "LABELED_AREA", "BACKGROUND_CLASS", "BASE_MODEL", "OUTPUT"):
        assert train.parameterDefinition(optional).flags() & train.parameterDefinition(optional).FlagOptional
    export = QgsApplication.processingRegistry().algorithmById("bicorseg:exporttrainingdata")
    assert [p.name() for p in export.parameterDefinitions()] == [
        "INPUT", "LABELS", "CLASS_FIELD", "TILE_SIZE", "OVERLAP", "OUTPUT_FOLDER",
    ]  # fmt: skip


def test_segment_parameters_match_the_design_table(qgis_app):
    alg = QgsApplication.processingRegistry().algorithmById("bicorseg:segmentlandcover")
    names = [p.name() for p in alg.parameterDefinitions()]
    assert names == FROZEN_SEGMENT_PARAMETERS
    outputs = {o.name() for o in alg.outputDefinitions()}
    assert {"OUTPUT", "HEATMAPS", "DEVICE_USED", "BACKEND_USED", "CLASS_STATISTICS"} <= outputs


@pytest.mark.parametrize(
    ("name", "options"), [("DEVICE", ["auto", "cpu", "cuda"]), ("BACKEND", ["auto", "onnxruntime", "torch"])]
)
def test_enums_store_static_strings_so_models_survive_new_options(qgis_app, name, options):
    alg = QgsApplication.processingRegistry().algorithmById("bicorseg:segmentlandcover")
    param = alg.parameterDefinition(name)
    assert isinstance(param, QgsProcessingParameterEnum)
    assert param.usesStaticStrings()
    assert param.options() == options
    assert param.defaultValue() == "auto"


def test_install_dependencies_profile_is_a_static_string_enum_with_a_folder_output(qgis_app):
    alg = QgsApplication.processingRegistry().algorithmById("bicorseg:installdependencies")
    param = alg.parameterDefinition("PROFILE")
    assert isinstance(param, QgsProcessingParameterEnum) and param.usesStaticStrings()
    assert param.options() == ["cpu", "cuda", "training"] and param.defaultValue() == "cpu"
    assert {o.name() for o in alg.outputDefinitions()} >= {"FOLDER", "PACKAGES"}


def test_tiling_parameters_are_advanced_and_default_to_the_card(qgis_app):
    from bicorseg_qgis.compat import FLAG_ADVANCED

    alg = QgsApplication.processingRegistry().algorithmById("bicorseg:segmentlandcover")
    for name, card_value in (("TILE_SIZE", 0), ("OVERLAP", -1), ("BATCH_SIZE", 0)):
        param = alg.parameterDefinition(name)
        assert param.flags() & FLAG_ADVANCED
        assert param.defaultValue() == card_value
    assert alg.parameterDefinition("BANDS").allowMultiple()
    assert alg.parameterDefinition("BANDS").parentLayerParameterName() == "INPUT"
    assert alg.parameterDefinition("HEATMAPS").flags() & alg.parameterDefinition("HEATMAPS").FlagOptional


def test_algorithms_run_in_the_background_thread(qgis_app):
    from qgis.core import QgsProcessingAlgorithm

    for alg in QgsApplication.processingRegistry().providerById("bicorseg").algorithms():
        assert not alg.flags() & QgsProcessingAlgorithm.FlagNoThreading, alg.id()
        assert alg.shortHelpString()
        assert alg.displayName() != alg.name()


def test_plugin_entry_point_adds_and_removes_the_provider(qgis_app):
    import bicorseg_qgis

    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("bicorseg")
    registry.removeProvider(existing)
    plugin = bicorseg_qgis.classFactory(None)
    plugin.initProcessing()
    assert registry.providerById("bicorseg") is not None
    plugin.unload()
    assert registry.providerById("bicorseg") is None
    plugin.initProcessing()  # leave a provider registered for the other tests
