# Shared by the tests/*/run.sh scripts (sourced, not run).
# Needs: $repo (the repository), $cache (where venvs live), $python (interpreter).

# ensure_venv VENV REQUIREMENTS: (re)builds VENV when it is missing or when
# REQUIREMENTS or the interpreter changed; a lock beside it keeps two runs
# from building it at once.
ensure_venv() {
    local venv=$1 requirements=$2 stamp
    mkdir -p "$(dirname "$venv")"
    exec 8>"$venv.lock"
    flock 8
    stamp="$( { cat "$requirements"; "$python" -VV; } | sha256sum | cut -d' ' -f1)"
    if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]]; then
        echo "run.sh: creating $venv" >&2
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
        echo "$stamp" >"$venv/.stamp"
    fi
    flock -u 8
}

# require_bins VAR:binary...: exports each VAR as the absolute path of a built
# workspace binary (VAR's value, relative to the repository, else the debug
# binary where cargo puts it: tests/binaries.py); a missing one stops the run
# with the build command.
require_bins() {
    local spec name bin path
    for spec; do
        name="${spec%%:*}" bin="${spec#*:}"
        if [[ -n "${!name:-}" ]]; then
            path="${!name}"
            [[ "$path" = /* ]] || path="$repo/$path"
        else
            path="$("$python" "$repo/tests/binaries.py" "$bin")"
        fi
        if [[ ! -x "$path" ]]; then
            echo "run.sh: no executable $bin at $path (build it: cargo build --workspace --bins)" >&2
            exit 1
        fi
        export "$name=$path"
    done
}
