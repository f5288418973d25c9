"""One public function per CLI job: each takes its settings dataclass."""

from polynl_deploy.errors import ExportError, InferenceError, SourceError
from polynl_deploy.export.exporter import ExportResult, check_opset, export_onnx
from polynl_deploy.io import check_outputs
from polynl_deploy.settings import ExportSettings, ValidateSettings
from polynl_deploy.sources import load_source
from polynl_deploy.validation import (Tolerance, Tolerances, ValidationReport, load_inputs, save_inputs, validate)


def run_export(settings: ExportSettings) -> ExportResult:
    check_opset(settings.opset)
    loaded = load_source(settings.source, settings.checkpoint)
    check_outputs(files=[settings.output], inputs=loaded.files)  # e.g. the zoo's checkpoint, the factory's module
    example = loaded.example_inputs(settings.input_shapes)
    try:
        return export_onnx(loaded.model, example, settings.output, dynamic=settings.dynamic, opset=settings.opset,
                           mode=settings.mode, source=settings.source)
    except ExportError:
        try:  # the model's own complaint about its inputs says more than torch.export's
            loaded.check_call(example, given=bool(settings.input_shapes))
        except SourceError as reason:
            raise ExportError(f"export failed: {reason}") from None
        raise


def tolerances_from(settings: ValidateSettings) -> Tolerances:
    tolerances = Tolerances()
    if settings.atol is not None or settings.rtol is not None:
        for dtype, tol in list(tolerances.per_dtype.items()):
            tolerances.per_dtype[dtype] = Tolerance(settings.atol if settings.atol is not None else tol.atol,
                                                    settings.rtol if settings.rtol is not None else tol.rtol)
    tolerances.per_output = {name: Tolerance(*pair) for name, pair in settings.per_output.items()}
    return tolerances


def run_validate(settings: ValidateSettings) -> ValidationReport:
    model = load_source(settings.source, settings.checkpoint).model if settings.source else None
    inputs = load_inputs(settings.load_inputs) if settings.load_inputs else None
    try:
        report = validate(settings.onnx_path, model, backends=settings.backends, inputs=inputs, seed=settings.seed,
                          tolerances=tolerances_from(settings), engine_path=settings.engine)
    except InferenceError as exc:
        if exc.backend != "eager":
            raise
        raise InferenceError(f"source {settings.source!r} does not take the inputs of {settings.onnx_path} "
                             f"(is it the model that was exported?): {exc}", exc.backend) from exc
    if settings.save_inputs:
        save_inputs(settings.save_inputs, report.feeds)
    if settings.report:
        report.save(settings.report)
    return report

