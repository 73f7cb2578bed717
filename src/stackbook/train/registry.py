"""Rolling the ``champion`` alias back: to the previous champion, or to a version named.

Why a plan first: a rollback changes what every consumer loads, so ``plan_rollback`` says what
would happen (from which version to which, why, whether the target still loads) without
changing anything, and ``apply`` carries out exactly that plan. The runbook shows the plan in a
dry run (the default) and applies it only with ``dry_run=False`` (in prod, with the approval a
destructive run needs).

"The previous champion" is the newest version below the current champion that once held the
alias: ``train_customer_model`` tags every version it promotes ``champion_decision=promoted``,
and a rollback tags its target ``rolled_back_to``. What was done and why is tagged on both
versions (``rollback_reason``, ``rolled_back_from``) and on the registered model
(``last_rollback``), and recorded in the ledger by the runbook.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from stackbook.core.errors import RollbackError
from stackbook.train import model as train_model

HELD_THE_ALIAS = ("promoted", "rolled_back_to")


@dataclass
class RollbackPlan:
    registered_model: str
    current: str | None  # the version holding the alias now
    target: str | None  # the version it would move to (None: nowhere to go)
    reason: str
    why_target: str  # how the target was chosen
    target_loads: bool = False
    applied: bool = False
    operator: str | None = None
    applied_at: str | None = None

    @property
    def possible(self) -> bool:
        return self.target is not None and self.target_loads and self.target != self.current

    def describe(self) -> str:
        if self.target is None:
            return f"no rollback possible for {self.registered_model}: {self.why_target}"
        verb = "moved" if self.applied else "would move"
        return (f"alias champion of {self.registered_model} {verb} from v{self.current} to v{self.target} "
                f"({self.why_target}); reason: {self.reason or '(none given)'}")

    def to_dict(self) -> dict:
        return {**asdict(self), "possible": self.possible}


def versions(registered_model: str):
    """Every version of the model with its decision tags, newest first (a DataFrame)."""
    import pandas as pd
    from mlflow import MlflowClient

    train_model.configure()
    client = MlflowClient()
    champion = train_model.current_champion(registered_model)
    rows = [{"version": str(v.version), "champion": champion is not None and str(v.version) == str(champion.version),
             "decision": v.tags.get("champion_decision", ""), "reason": v.tags.get("champion_reason", ""),
             "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
             "run_id": v.run_id}
            for v in client.search_model_versions(f"name = '{registered_model}'")]
    frame = pd.DataFrame(rows, columns=["version", "champion", "decision", "reason", "created", "run_id"])
    order = frame["version"].astype(int).sort_values(ascending=False).index
    return frame.loc[order].reset_index(drop=True)


def _previous(table, current: str) -> str | None:
    earlier = table[(table["version"].astype(int) < int(current)) & table["decision"].isin(HELD_THE_ALIAS)]
    return None if earlier.empty else str(earlier["version"].iloc[0])


def plan_rollback(registered_model: str, to_version: str = "", reason: str = "") -> RollbackPlan:
    """What a rollback would do; changes nothing. RollbackError for a model or version that does not exist."""
    import mlflow

    champion = train_model.current_champion(registered_model)
    table = versions(registered_model)
    if table.empty:
        raise RollbackError(f"registered model {registered_model!r} has no versions: nothing to roll back")
    current = str(champion.version) if champion else None
    if to_version:
        if to_version not in set(table["version"]):
            raise RollbackError(f"{registered_model} has no version {to_version} (versions: "
                                f"{', '.join(table['version'])})")
        target, why = to_version, "the version asked for"
    elif current is None:
        target, why = None, "no version holds the alias champion"
    else:
        target = _previous(table, current)
        why = (f"the previous champion, the newest version below v{current} that held the alias" if target
               else f"no version below v{current} ever held the alias")
    plan = RollbackPlan(registered_model=registered_model, current=current, target=target, reason=reason,
                        why_target=why)
    if target == current and target is not None:
        plan.why_target = f"v{target} already holds the alias"
    if target is not None:
        try:
            mlflow.pyfunc.load_model(f"models:/{registered_model}/{target}")
            plan.target_loads = True
        except Exception as exc:  # noqa: BLE001 (any reason it cannot load makes it no target; said in the plan)
            plan.why_target += f"; but it does not load ({type(exc).__name__}: {str(exc)[:200]})"
    return plan


def apply(plan: RollbackPlan, operator: str | None = None) -> RollbackPlan:
    """Move the alias as PLAN says and tag why; RollbackError when the plan is not possible or has no reason."""
    from mlflow import MlflowClient

    if not plan.possible:
        raise RollbackError(f"cannot roll back: {plan.describe()}")
    if not plan.reason.strip():
        raise RollbackError("a rollback needs a reason (-p reason='...'): it is recorded with the change")
    client = MlflowClient()
    name, now = plan.registered_model, datetime.now(UTC).isoformat(timespec="seconds")
    operator = operator or getpass.getuser()
    client.set_registered_model_alias(name, train_model.CHAMPION_ALIAS, plan.target)
    client.set_model_version_tag(name, plan.target, "champion_decision", "rolled_back_to")
    client.set_model_version_tag(name, plan.target, "champion_reason",
                                 f"rolled back from v{plan.current} by {operator} at {now}: {plan.reason}")
    if plan.current:
        client.set_model_version_tag(name, plan.current, "rolled_back_from", f"{now}: {plan.reason}")
    client.set_registered_model_tag(name, "last_rollback", json.dumps(
        {"from": plan.current, "to": plan.target, "reason": plan.reason, "by": operator, "at": now,
         "run_id": os.environ.get("STACKBOOK_RUN_ID")}))
    plan.applied, plan.operator, plan.applied_at = True, operator, now
    return plan
