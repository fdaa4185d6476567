#!/usr/bin/env bash
# Build (and optionally push) the scoreops container images with Docker.
#
# Usage: hack/images.sh [--dry-run] [--push] [--registry REG] [--tag TAG] [IMAGE...]
#   IMAGE       operator, trainer, evaluator, server (default: all, trainer before evaluator)
#   --registry  image registry/organisation (default: ghcr.io/scoreops, or $SCOREOPS_IMAGE_REGISTRY)
#   --tag       image tag (default: SCOREOPS_VERSION from images/versions.env, or $SCOREOPS_IMAGE_TAG)
#   --push      push each image after building it
#   --dry-run   print the docker commands instead of running them (needs no Docker engine)
#
# Every KEY=VALUE of images/versions.env is passed as --build-arg: the Dockerfiles declare
# their versions as ARGs without defaults and read nothing else. The build context is the
# repository root; images/NAME/Dockerfile.dockerignore keeps it small.
# Environment: DOCKER (the docker CLI to use, default: docker).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
# shellcheck source=hack/lib.sh
. "$HERE/lib.sh"

ALL=(operator trainer evaluator server)
VERSIONS="$ROOT/images/versions.env"
DOCKER="${DOCKER:-docker}"
registry="${SCOREOPS_IMAGE_REGISTRY:-ghcr.io/scoreops}"
tag="${SCOREOPS_IMAGE_TAG:-}"
push=0
dry=0
want=()

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --push) push=1 ;;
    --dry-run) dry=1 ;;
    --registry) [ $# -ge 2 ] || die "--registry needs a value"; registry="$2"; shift ;;
    --registry=*) registry="${1#*=}" ;;
    --tag) [ $# -ge 2 ] || die "--tag needs a value"; tag="$2"; shift ;;
    --tag=*) tag="${1#*=}" ;;
    -*) die "unknown option: $1 (try --help)" ;;
    *)
      case " ${ALL[*]} " in
        *" $1 "*) want+=("$1") ;;
        *) die "unknown image: $1 (one of: ${ALL[*]})" ;;
      esac ;;
  esac
  shift
done
registry="${registry%/}"

# --- the pins ---------------------------------------------------------------------------------
[ -f "$VERSIONS" ] || die "missing $VERSIONS"
build_args=()
declare -A pin=()
while IFS= read -r line || [ -n "$line" ]; do
  line="${line%%#*}"
  line="$(printf '%s' "$line" | tr -d '[:space:]')"
  [ -n "$line" ] || continue
  case "$line" in
    *=*) ;;
    *) die "images/versions.env: not KEY=VALUE: $line" ;;
  esac
  key="${line%%=*}"
  value="${line#*=}"
  [[ "$key" =~ ^[A-Z][A-Z0-9_]*$ ]] || die "images/versions.env: bad key: $key"
  [ -n "$value" ] || die "images/versions.env: $key is empty"
  pin[$key]="$value"
  build_args+=(--build-arg "$key=$value")
done <"$VERSIONS"
[ -n "${pin[SCOREOPS_VERSION]:-}" ] || die "images/versions.env has no SCOREOPS_VERSION"
tag="${tag:-${pin[SCOREOPS_VERSION]}}"

# build in dependency order whatever order they were asked in
order=()
if [ "${#want[@]}" -eq 0 ]; then
  order=("${ALL[@]}")
else
  for name in "${ALL[@]}"; do
    case " ${want[*]} " in *" $name "*) order+=("$name") ;; esac
  done
fi

# --- the engine -------------------------------------------------------------------------------
if [ "$dry" -eq 0 ]; then
  if ! command -v "$DOCKER" >/dev/null 2>&1; then
    die "no Docker engine here: '$DOCKER' is not installed, so nothing was built.
  Building the images needs Docker (with BuildKit) on a machine that can reach PyPI and the
  base image registry. See the commands with: hack/images.sh --dry-run"
  fi
  if ! info_err="$("$DOCKER" info 2>&1 >/dev/null)"; then
    die "no Docker engine here: '$DOCKER info' failed, so nothing was built:
  $(printf '%s' "$info_err" | tail -n 3)
  Start the Docker daemon (or point DOCKER_HOST at one) and run 'make images' again; see the
  commands with: hack/images.sh --dry-run"
  fi
fi

run() {
  if [ "$dry" -eq 1 ]; then
    printf '%q ' "$@"
    printf '\n'
  else
    log "$*"
    "$@"
  fi
}

for name in "${order[@]}"; do
  ref="$registry/$name:$tag"
  extra=()
  if [ "$name" = evaluator ]; then
    extra=(--build-arg "TRAINER_IMAGE=$registry/trainer:$tag")
  fi
  run env DOCKER_BUILDKIT=1 "$DOCKER" build \
    --file "$ROOT/images/$name/Dockerfile" \
    --tag "$ref" \
    --label "org.opencontainers.image.revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)" \
    "${build_args[@]}" "${extra[@]}" \
    "$ROOT"
  if [ "$push" -eq 1 ]; then
    run "$DOCKER" push "$ref"
  fi
done
[ "$dry" -eq 1 ] || log "built: ${order[*]} ($registry/*:$tag)"
