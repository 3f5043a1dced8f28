"""The provider and its algorithms load in real QGIS with the frozen ids, parameters and enum strings."""

from __future__ import annotations

import pytest
from qgis.core import QgsApplication, QgsProcessingParameterEnum

pytestmark = pytest.mark.qgis

FROZEN_SEGMENT_PARAMETERS = [
    "INPUT", "MODEL", "DEVICE", "BACKEND", "BANDS", "EXTENT", "MASK",
    "TILE_SIZE", "OVERLAP", "BATCH_SIZE", "RESAMPLE", "VALUE_SCALING", "OUTPUT", "HEATMAPS", "HBIS_HEATMAPS",
    "HBIS_LAYER", "VECTOR_OUTPUT", "MIN_AREA",
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
    ("name", "options"),
    [
        ("DEVICE", ["auto", "cpu", "cuda"]),
        ("BACKEND", ["auto", "onnxruntime", "torch"]),
        ("VALUE_SCALING", ["card", "minmax", "percentile"]),
    ],
)
def test_enums_store_static_strings_so_models_survive_new_options(qgis_app, name, options):
    alg = QgsApplication.processingRegistry().algorithmById("bicorseg:segmentlandcover")
    param = alg.parameterDefinition(name)
    assert isinstance(param, QgsProcessingParameterEnum)
    assert param.usesStaticStrings()
    assert param.options() == options
    assert param.defaultValue() == options[0]
    clone = param.clone()  # Processing clones definitions (batch, models): the copy still takes option numbers
    assert clone.checkValueIsAcceptable("1") and clone.checkValueIsAcceptable(options[1])
    assert not clone.checkValueIsAcceptable("3") and not clone.checkValueIsAcceptable("other")


def test_resample_is_a_boolean_defaulting_to_true(qgis_app):
    from qgis.core import QgsProcessingParameterBoolean

    alg = QgsApplication.processingRegistry().algorithmById("bicorseg:segmentlandcover")
    param = alg.parameterDefinition("RESAMPLE")
    assert isinstance(param, QgsProcessingParameterBoolean) and param.defaultValue() is True


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


def test_hbis_and_vector_parameters_are_optional_with_advanced_defaults(qgis_app):
    from qgis.core import QgsProcessingParameterDefinition, QgsProcessingParameterVectorDestination

    from bicorseg_qgis.compat import FLAG_ADVANCED

    alg = QgsApplication.processingRegistry().algorithmById("bicorseg:segmentlandcover")
    optional = QgsProcessingParameterDefinition.FlagOptional
    for name in ("HBIS_HEATMAPS", "VECTOR_OUTPUT", "HBIS_LAYER", "MIN_AREA"):
        assert alg.parameterDefinition(name).flags() & optional, name
    for name, default in (("HBIS_LAYER", -1), ("MIN_AREA", 0.0)):
        assert alg.parameterDefinition(name).flags() & FLAG_ADVANCED
        assert alg.parameterDefinition(name).defaultValue() == default
    vector = alg.parameterDefinition("VECTOR_OUTPUT")
    assert isinstance(vector, QgsProcessingParameterVectorDestination)
    assert vector.defaultFileExtension() == "gpkg"
    assert vector.supportedOutputVectorLayerExtensions() == ["gpkg", "fgb", "geojson"]
    assert {o.name() for o in alg.outputDefinitions()} >= {"HBIS_HEATMAPS", "VECTOR_OUTPUT"}


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
