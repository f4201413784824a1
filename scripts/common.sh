# Sourced by every shell wrapper in scripts/: sets ROOT (the repository) and PYTHON (the interpreter:
# $PYTHON when set, else the repository's .venv when present, else python3), and defines split_images.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

# split_images ARG...: the arguments before "--" go to IMAGES (at least one is required), those after it
# to FLAGS (extra generate_samples.py flags).
split_images() {
  IMAGES=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do IMAGES+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  FLAGS=("$@")
  if [[ ${#IMAGES[@]} -eq 0 ]]; then echo "error: give at least one image or folder" >&2; exit 2; fi
}
