"""The CLI's shared helpers, by concern: ``errors`` (exit codes, ``CliError``,
``handle_errors``), ``options`` (option factories, status choices, value parsing),
``output`` (formats, records, tables) and ``prompts`` (ids, confirmation, editor).

This module re-exports their names for code written against the former single module
(CLI plugins included); new code imports from the module of the concern.
"""

from __future__ import annotations

from labtasker.client.cli.errors import (  # noqa: F401
    EXIT_NO_CONFIG,
    EXIT_RUNTIME,
    EXIT_USAGE,
    CliError,
    convert_exception,
    fail,
    handle_errors,
    usage_error,
)
from labtasker.client.cli.options import (  # noqa: F401
    OutputFormat,
    TaskStatusChoice,
    WorkerStatusChoice,
    ansi_option,
    dict_option,
    filter_option,
    fmt_option,
    ids_argument,
    ids_filter,
    page_size_option,
    pager_option,
    parse_sort,
    yes_option,
)
from labtasker.client.cli.output import (  # noqa: F401
    STATUS_STYLES,
    choose_format,
    compact_json,
    emit_records,
    fmt_time,
    make_console,
    model_to_dict,
    print_filter,
    status_text,
    tasks_table,
    write_jsonl_item,
    write_yaml_item,
)
from labtasker.client.cli.prompts import (  # noqa: F401
    confirm,
    delete_by_ids,
    for_each_id,
    ids_to_act_on,
    read_ids_from_stdin,
    run_editor,
)
from labtasker.client.terminal import stdin_is_tty, stdout_is_tty  # noqa: F401
