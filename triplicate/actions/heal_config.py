"""The primary's ``config`` file: the one restic file not named by the hash of its content.

restic encrypts it, so keyless a primary ``config`` that differs from its locations'
cannot be told damaged (a flipped bit: restic says "config or key ... is damaged")
from rewritten on purpose (``restic migrate upgrade_repo_v2`` writes a new one).
When the locations agree with one another on a config other than the primary's,
heal and recover say so, naming both and the fix. With the client's key restic
tells: a config it cannot decrypt, while it decrypts a location's, is damaged, and
heal puts the location's copy back. ``heal --config-from LOCATION`` does the same
on the operator's word, only when that location agrees with every other one.
Only a location that holds one of the primary's key files (named by their content:
no other repository has one) counts as a copy of it here; one that holds none is
another repository, whatever its config says.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from triplicate import restic
from triplicate.actions.repository import restic_repository
from triplicate.config.model import Config
from triplicate.errors import UsageError

TIMEOUT_SECONDS = 120.0
# FileHeal.bad_at for the primary's config: restic cannot decrypt it, or the operator said to replace it.
DAMAGED = "damaged"
DIFFERS = "differs"


@dataclass(frozen=True)
class ConfigChoice:
    """What to do about the primary's config: put ``source``'s back (``why``: DAMAGED or DIFFERS),
    or nothing, with ``note`` saying why when there is something to say."""

    source: str | None = None
    why: str | None = None
    note: str | None = None


def shares_a_key(primary_keys: Collection[str], location_keys: Collection[str]) -> bool:
    """Whether a location holds one of the primary's key files: a copy of this repository, not another."""
    return not set(primary_keys).isdisjoint(location_keys)


def agreed_config(configs: Mapping[str, bytes]) -> bytes | None:
    """The config every location in ``configs`` holds when they hold one and the same; else None."""
    values = set(configs.values())
    return next(iter(values)) if len(values) == 1 else None


def disagreement(client: str, locations: Sequence[str], has_key: bool) -> str:
    """One line: the primary's config differs from the one ``locations`` agree on; either it is damaged
    (and how to put theirs back, with the client's key or without) or the repository was rewritten on purpose."""
    where = locations[0] if len(locations) == 1 else f"{', '.join(locations)}, which agree with one another"
    by_word = f"'triplicate heal {client} --config-from {locations[0]}'"
    fix = (f"'triplicate heal {client}' asks restic which it is and puts the locations' copy back if it is "
           f"damaged, or {by_word} on your word" if has_key else
           f"put the locations' copy back with {by_word}, or configure the client's key and 'triplicate heal' "
           "tells and does it")
    return (f"the primary's config differs from the one its locations hold ({where}): either the primary's "
            f"config file is damaged (restic then says 'config or key ... is damaged'; {fix}; the damaged one is "
            "kept in quarantine), or the repository was rewritten on purpose ('restic migrate upgrade_repo_v2') "
            "and the locations hold the old config, which replication refuses (move their copies aside by hand "
            "to replicate it afresh)")


def restic_config_error(config: Config, client: str, location: str | None) -> str | None:
    """What restic says when it reads the config at ``location`` (None: the primary) with the client's
    key, without a lock; None when it reads it. Raises CommandFailed when restic cannot run, StorageError
    when a location's credentials cannot be read."""
    repository = restic_repository(config, client, location)
    result = restic.restic_run(["cat", "config"], repository.environment, lock=False, secrets=repository.secrets,
                               timeout=TIMEOUT_SECONDS)
    if result.returncode == 0:
        return None
    return restic.error_summary(result.stderr.decode("utf-8", "replace"))


def choose(config: Config, client: str, differing: Mapping[str, bytes], matching: Sequence[str],
           unusable: Mapping[str, str], config_from: str | None) -> ConfigChoice:
    """Whether to put a location's config back at the primary.

    ``differing``: location -> its config, for the locations whose config is not the primary's;
    ``matching``: the locations whose config is the primary's; ``unusable``: location -> why it
    gave no config. With ``config_from`` (the operator's word) that location's config, when every
    other location holding one agrees with it; else, when the locations agree on a config other
    than the primary's: with the client's key, the config of the first location restic can read,
    when restic cannot decrypt the primary's; keyless, a note naming both possibilities.
    Raises UsageError refusing ``config_from``; CommandFailed when restic cannot run.
    """
    if config_from is not None:
        return _operator_choice(client, differing, matching, unusable, config_from)
    if matching or agreed_config(differing) is None:
        return ConfigChoice()  # no agreement against the primary: each differing location is another repository
    names = list(differing)
    if not config.settings(client).has_key:
        return ConfigChoice(note=disagreement(client, names, has_key=False))
    primary_error = restic_config_error(config, client, None)
    if primary_error is None:
        return ConfigChoice(note=f"the primary's config differs from the one its locations hold ({', '.join(names)})"
                            ", but restic reads it with the client's key, so it is not damaged: the repository "
                            "was rewritten on purpose ('restic migrate upgrade_repo_v2') or replaced; the "
                            "locations hold the old config, which replication refuses (move their copies aside "
                            "by hand to replicate it afresh)")
    if restic.key_problem(primary_error):
        return ConfigChoice(note=f"restic could not tell whether the primary's config is damaged ({primary_error}); "
                            + disagreement(client, names, has_key=True))
    errors = {}
    for name in names:
        error = restic_config_error(config, client, name)
        if error is None:
            return ConfigChoice(name, DAMAGED)
        errors[name] = error
    shown = "; ".join(f"{name}: {error}" for name, error in errors.items())
    return ConfigChoice(note=f"restic cannot read the primary's config ({primary_error}) nor any location's "
                        f"({shown}): nothing put back")


def _operator_choice(client: str, differing: Mapping[str, bytes], matching: Sequence[str],
                     unusable: Mapping[str, str], config_from: str) -> ConfigChoice:
    """``heal --config-from``: that location's config, or a UsageError saying why not."""
    option = f"--config-from {config_from}"
    if config_from in matching:
        raise UsageError(f"{option}: its config is the same as the primary's: nothing to put back")
    if config_from not in differing:
        raise UsageError(f"{option}: {unusable.get(config_from, 'no config there')}; nothing replaced")
    others = [name for name, config_file in differing.items() if config_file != differing[config_from]]
    others += list(matching)
    if others:
        raise UsageError(f"{option}: its config differs from {', '.join(others)}'s: the locations do not agree on "
                         "which repository it is; nothing replaced")
    return ConfigChoice(config_from, DIFFERS)
