"""Schemathesis hooks for `.ci/schemathesis` (loaded through SCHEMATHESIS_HOOKS).

The run authenticates with one token; the only call it must not make is the one revoking that very token
(`DELETE /v1/users/{username}/tokens/{id}` with the run's own token id, which the script reads from `GET /v1/me`
and passes in MANDANT_ST_TOKEN_ID): every later request would be a 401. Everything else is tested.
"""

import os
import zlib

import schemathesis

OWN_TOKEN_ID = os.environ.get("MANDANT_ST_TOKEN_ID", "").lower()
REVOKE_PATH = "/v1/users/{username}/tokens/{id}"
# A token id no token has: a revocation rewritten to it is answered 404 and revokes nothing.
NO_TOKEN_ID = "00000000-0000-0000-0000-000000000000"


def _revokes_own_token(case) -> bool:
    if case.method.upper() != "DELETE" or case.path != REVOKE_PATH:
        return False
    token_id = (case.path_parameters or {}).get("id")
    return OWN_TOKEN_ID != "" and str(token_id).strip().lower() == OWN_TOKEN_ID


@schemathesis.hook
def filter_case(context, case):
    """Generated cases (examples, coverage, fuzzing): drop the own-token revocation."""
    return not _revokes_own_token(case)


@schemathesis.hook
def before_call(context, case, kwargs):
    """Stateful sequences take ids from responses (`GET /v1/me` names the token in use) and are not filtered
    above: defuse the revocation there instead."""
    if _revokes_own_token(case):
        case.path_parameters["id"] = NO_TOKEN_ID


# The data `.ci/schemathesis` sets up before the run. Half of the positive cases (chosen by a hash of the
# generated parameters, so a seeded run stays repeatable) address these real objects instead of random ones, so
# operations on `{slug}`, `{name}`, `{id}` paths reach their handlers' real work, not only the 404 of an unknown
# path; the other half, every negative case and the stateful phase keep what Schemathesis generated.
TEMPLATE_ID = os.environ.get("MANDANT_ST_TEMPLATE_ID", "")
SLUGS = ["acme-de", "globex", "master"]


def _real_value(path: str, name: str, generated):
    if name == "slug":
        return SLUGS[zlib.crc32(str(generated).encode()) % len(SLUGS)]
    if name == "username":
        return "anna"
    if name == "rid":
        return 1
    if name == "name":
        if path.startswith("/v1/roles/"):
            return "campaign-manager"
        if path.startswith("/v1/fields/"):
            return "region"
        return "city"
    if name == "id":
        if "/templates/" in path:
            return TEMPLATE_ID or None
        if path.startswith("/v1/clients/") or path.startswith("/v1/target-groups/"):
            return 1
    return None


@schemathesis.hook
def map_case(context, case):
    meta = getattr(case, "meta", None)
    params = case.path_parameters
    if meta is None or not params or str(getattr(meta.generation.mode, "value", "")) != "positive":
        return case
    # Stateful sequences and cases drawn from captured resources address what the run itself created: keep them.
    if "stateful" in str(getattr(meta.phase.name, "value", meta.phase.name)) or meta.pool_draws:
        return case
    if zlib.crc32(repr(sorted(params.items(), key=lambda kv: kv[0])).encode()) % 2:
        return case
    for name, generated in list(params.items()):
        real = _real_value(case.path, name, generated)
        if real is not None:
            params[name] = real
    return case
