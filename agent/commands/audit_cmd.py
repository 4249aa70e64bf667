"""``rankscope audit ID``: re-run stored experiments and check an investigation's records;
``rankscope chain-key``: the key that signs the record chain."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from rankscope.agent.commands.options import DbOption, DeviceOption, InvestigationId
from rankscope.agent.commands.output import console, err_console


def audit_command(
    investigation_id: InvestigationId,
    db: DbOption = None,
    device: DeviceOption = "cpu",
    experiment: Annotated[
        list[int] | None,
        typer.Option("--experiment", help="Re-run only these experiment ids (repeatable)."),
    ] = None,
    no_rerun: Annotated[
        bool, typer.Option("--no-rerun", help="Check artifacts, citations and rules only.")
    ] = False,
    expect: Annotated[
        str | None,
        typer.Option(
            "--expect",
            metavar="HEAD",
            help="A record-chain head kept outside the database (printed in the report, the "
            "bundle and `rankscope show`): drift unless the chain still passes through it.",
            show_default=False,
        ),
    ] = None,
    signed: Annotated[
        bool,
        typer.Option(
            "--signed",
            help="Drift unless every link of the record chain is signed by a trusted key "
            "(yours, or one in the trusted-keys folder; see `rankscope chain-key`).",
        ),
    ] = False,
) -> None:
    """Re-run stored experiments, compare, check artifacts, citations, the record chain and the
    report files; non-zero on drift."""
    from rankscope.agent.audit import audit_investigation, print_report
    from rankscope.agent.runner import check_device
    from rankscope.experiments_db.engine import open_store
    from rankscope.experiments_db.errors import StoreError

    if not no_rerun:
        check_device(device)
    try:
        with open_store(db, create=False) as store:
            report = audit_investigation(
                store,
                investigation_id,
                device=device,
                rerun=not no_rerun,
                experiments=set(experiment) if experiment else None,
                expect=expect,
                signed=signed,
            )
    except StoreError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from err
    print_report(report, console)
    if not report.ok:
        raise typer.Exit(1)


def chain_key_command(
    new: Annotated[
        bool, typer.Option("--new", help="Make a signing key (never replaces one).")
    ] = False,
) -> None:
    """Show (or make, with --new) the ed25519 key that signs the record chains this user writes.

    The key lives in the user's config folder (or at $RANKSCOPE_CHAIN_KEY); without it links are
    not signed. Share the printed public key (a .pem in the trusted-keys folder beside the key)
    with whoever audits a store you write to."""
    from rankscope.experiments_db.signing import (
        TRUSTED_DIR,
        SigningKeyError,
        create_key,
        current_signer,
        key_path,
    )

    try:
        signer = create_key() if new else current_signer()
    except SigningKeyError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(1) from err
    if signer is None:
        console.print(
            f"No signing key at {escape(str(key_path()))}: record chains are not signed. "
            "Make one with `rankscope chain-key --new`.",
            highlight=False,
        )
        return
    console.print(
        f"{'Made' if new else 'Signing'} key {signer.key_id} at {escape(str(signer.path))}\n"
        f"Trusted public keys (others'): {escape(str(key_path().parent / TRUSTED_DIR))}/*.pem\n"
        f"Public key:\n{signer.public_pem()}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add ``audit`` and ``chain-key`` to the ``rankscope`` app."""
    app.command("audit")(audit_command)
    app.command("chain-key")(chain_key_command)
