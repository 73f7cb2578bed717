"""Every exception stackbook raises on purpose, in one place, under one root.

Why one module: a reader (or ``stackbook ... --json``, whose error document carries the
class name as ``kind``) can see every error there is, what it means and the exit code it
ends a command with, and no two classes share a name. The modules that raise these
import them from here (and re-export them where runbooks and tests always found them:
``from stackbook.ingest import LoadError`` keeps working). Only private control-flow
exceptions that never leave their module (``_Rejected``, ``_StepFailed``) live elsewhere.

``exit_code`` is what ``stackbook.cli.common.handle_errors`` (the one place errors become
exit codes and messages for people) exits with. The codes are those the README documents:
1 failed, 2 bad usage (nothing was executed), 3 refused; 130 (cancelled) and 141 (the
reader of the output went away) come from signals, not from these classes.

This module imports nothing but the standard library: the CLI imports it at start-up.
"""

from __future__ import annotations

from typing import Any

#: the exit codes stackbook documents (README, "Exit codes"): success, failed, bad usage, refused,
#: waiting at a manual step, cancelled, reader gone
EXIT_WAITING = 4  # not a failure and not done: a person must confirm a step (``stackbook attest``)
EXIT_CODES = (0, 1, 2, 3, EXIT_WAITING, 130, 141)


# --- the root and the three kinds of failure ---------------------------------------------------


class StackbookError(Exception):
    """Root of every error stackbook raises on purpose (exit 1 unless a subclass says otherwise)."""

    exit_code = 1

    def __init__(self, message: str, *, runbook: str | None = None, env: str | None = None):
        super().__init__(message)
        self.runbook = runbook
        self.env = env


class UsageError(StackbookError):
    """Bad usage or bad input: nothing was executed (exit 2)."""

    exit_code = 2


class RefusedError(StackbookError):
    """The run was refused: an exclusive runbook is running, or approval is missing (exit 3)."""

    exit_code = 3


# --- core: notebooks, parameters, environments, secrets ----------------------------------------


class NotebookError(UsageError):
    """A notebook that cannot be read or has no valid parameters cell (exit 2)."""


class ParameterError(UsageError):
    """An unknown parameter or a value that does not convert to its type (exit 2)."""


class SecretError(UsageError):
    """A declared secret is missing; the message names it, never its value (exit 2)."""


class EnvironmentFileError(UsageError):
    """An environment file (``infra/environments/ENV.yml``) that is missing or malformed (exit 2)."""


# --- run: the database and the project-local PostgreSQL cluster -------------------------------


class DatabaseUnavailable(UsageError):
    """No database to talk to: the local cluster is down and DATABASE_URL is unset (exit 2)."""


class ClusterError(StackbookError):
    """The project-local PostgreSQL cluster (``.stackbook/pg``) could not be set up, started or stopped (exit 1)."""

    exit_code = 1


class LedgerUnreachable(StackbookError):
    """The ledger's database went away during a run and stayed away past ``STACKBOOK_DB_RETRY_S`` (exit 1)."""

    exit_code = 1


class KernelCodeError(StackbookError):
    """Code stackbook ran hidden in a run's kernel (a snapshot) raised, or the kernel died or did not answer (exit 1)."""

    exit_code = 1


class SnapshotError(StackbookError):
    """A failed run's kernel snapshot could not be restored into the resumed run's kernel (exit 1)."""

    exit_code = 1


class ApprovalRefused(RefusedError):
    """A destructive run without an approval that matches it exactly (``stackbook.run.approvals``): missing,
    for other code, parameters or environment, expired, used, self-given or by someone not listed (exit 3)."""


# --- pipelines and schedules -------------------------------------------------------------------


class PipelineSpecError(UsageError):
    """A pipeline spec (``pipeline.yaml``) that is missing or malformed; nothing ran (exit 2)."""


class ScheduleError(StackbookError):
    """A schedule could not be generated, e.g. CronJobs that fail validation or the audit (exit 1)."""

    exit_code = 1


class LocalAirflowError(ScheduleError):
    """The local Airflow (``stackbook schedule airflow-local``) did not migrate, start or stop; the message
    names the component and its log file (exit 1)."""


# --- k8s: manifests and the Kubernetes API ------------------------------------------------------


class ManifestError(UsageError):
    """A Kubernetes manifest or kustomization that cannot be read, rendered or validated (exit 2)."""


class KubernetesError(StackbookError):
    """A kubeconfig context that is missing or unreachable, or an apply the API server refused (exit 1)."""

    exit_code = 1


# --- book ---------------------------------------------------------------------------------------


class BookError(StackbookError):
    """The book could not be generated or built (exit 1)."""


class BookUsageError(UsageError):
    """Bad input to ``stackbook book`` or ``stackbook new``; nothing was written (exit 2)."""


# --- ingest: CSV folders into PostgreSQL, the Jaffle Shop generator -----------------------------


class LoadError(StackbookError):
    """A load that did not fully succeed; ``.report`` (a ``LoadReport``) tells every file's fate (exit 1)."""

    def __init__(self, message: str, report: Any = None, **kw):
        super().__init__(message, **kw)
        self.report = report


class TooManyBadRows(LoadError):
    """A file's share of bad rows is over ``max_bad_ratio``: nothing of that file was loaded (exit 1)."""


class FileError(LoadError):
    """One file could not be loaded at all: schema drift, missing key columns (exit 1)."""


class SourceError(UsageError):
    """The source folder, its files or the keys given for them cannot be used (exit 2)."""


class SpecError(UsageError):
    """A column-type spec (file or dict) that cannot be used; the message names the file and entry (exit 2)."""


class EncodingNotSupported(UsageError):
    """A file encoding PostgreSQL's COPY cannot read (exit 2)."""


class HeaderError(UsageError):
    """A CSV header row that cannot be read (exit 2)."""


class GeneratorError(StackbookError):
    """The Jaffle Shop generator ``jafgen`` is missing or failed (exit 1)."""


# --- transform, train, provision ----------------------------------------------------------------


class DbtError(StackbookError):
    """dbt could not run: a broken project, profile or connection (exit 1)."""


class DbtBuildFailed(DbtError):
    """``dbt build`` ran and a model or test failed; ``.result`` (a ``BuildResult``) holds the details (exit 1)."""

    def __init__(self, message: str, result: Any = None, **kw):
        super().__init__(message, **kw)
        self.result = result


class TrainingError(StackbookError):
    """Training could not run: missing marts, too little data, an unreachable tracking store (exit 1)."""


class ProvisionError(StackbookError):
    """Provisioning could not plan or apply; the message names the object and the fix (exit 1)."""


# --- quality (Great Expectations) and the model after training ---------------------------------


class QualityError(StackbookError):
    """A validation could not run: an unreadable suite file, a missing table, GX unable to connect (exit 1)."""


class ExpectationsFailed(QualityError):
    """A validation ran and expectations failed; ``.validation`` (a ``Validation``) holds every result (exit 1)."""

    def __init__(self, message: str, validation: Any = None, **kw):
        super().__init__(message, **kw)
        self.validation = validation


class ScoringError(TrainingError):
    """Batch scoring could not run: no champion to score with, or no customers to score at that date (exit 1)."""


class DriftDetected(StackbookError):
    """A feature drifted or the realised error is above its threshold; ``.report`` holds the figures (exit 1)."""

    def __init__(self, message: str, report: Any = None, **kw):
        super().__init__(message, **kw)
        self.report = report


class ServingError(StackbookError):
    """The model server did not start or answer, or its predictions differ from the in-process ones (exit 1)."""


class RollbackError(StackbookError):
    """The champion alias cannot move back: no earlier version, or a target version that does not load (exit 1)."""


# --- audit and disaster recovery ----------------------------------------------------------------


class AuditFailed(StackbookError):
    """A check at or above the ``fail_on`` severity failed or could not be made (exit 1)."""

    exit_code = 1

    def __init__(self, message: str, failing_ids: list[str], report_path: str | None = None, **kw):
        super().__init__(message, **kw)
        self.failing_ids = failing_ids
        self.report_path = report_path


class AuditRedactionError(StackbookError):
    """The audit cannot build the scrubber that keeps secrets out of its evidence; no report written (exit 1)."""


class DrError(StackbookError):
    """A disaster-recovery drill step failed; the message names the step, file or table and the fix (exit 1)."""


class DrRefused(RefusedError):
    """A restore target that must not be restored into (a live or system database) without ``force`` (exit 3)."""


# --- notify: routes of failure notifications ----------------------------------------------------


class NotifyConfigError(EnvironmentFileError):
    """A ``notify:`` route that cannot be used (unknown event, no channel, unset ``${VAR}``) (exit 2)."""
