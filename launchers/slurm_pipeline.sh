# Helpers for the STAGE=pipeline mode of launchers/*.slurm (sourced by launchers/slurm_recipe.sh; not submitted on its own).
#
# submit_chain SCRIPT STAGE... submits one job per stage, each depending (afterok) on the one
# before; the last stage (sampling/evaluation) runs on one node with one task. SBATCH_ARGS (space
# separated sbatch options, e.g. "--partition=gpu --account=proj --nodes=4") go to every job of the
# chain. Every training job requeues itself on preemption, so a chain survives preemptions and lost nodes.
# drop_single_stage_settings removes CONFIG and RUN_DIR from the chain's environment (with a warning):
# every job would inherit them and train all stages in one run directory or with one config; the chain
# takes the per-stage settings (*_CONFIG, *_RUN) instead.
# run_encode VAE_RUN STORE LATENTS encodes a store data-parallel over the job's tasks (rank r takes
# volumes r::world); a rerun skips latents already written.
# validate_chain CONFIG... checks, before anything is submitted, what would make the chain fail late
# (no sbatch, no store, a missing config, an evaluation without weights or an explicit smoke flag) and
# prints the global batch each training stage will run at on NODES x GPUS_PER_NODE ranks; it returns
# 2 (nothing submitted) on any problem. NODES / GPUS_PER_NODE (default: the #SBATCH lines, 2 x 4) set
# the training jobs' size.

drop_single_stage_settings() {
    local name
    for name in CONFIG RUN_DIR; do
        if [ -n "${!name:-}" ]; then
            echo "[pipeline] ignoring $name=${!name}: it would apply to every stage of the chain; use the" \
                 "per-stage settings ($*)" >&2
        fi
        unset "$name"
    done
}

# chain_options ARG...: `--nodes N` / `--gpus-per-node N` (or --gpus N) on the pipeline command line set
# NODES / GPUS_PER_NODE; anything else is an error (exit 2)
chain_options() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --nodes) NODES=${2:?--nodes needs a number}; shift 2 ;;
            --nodes=*) NODES=${1#*=}; shift ;;
            --gpus-per-node|--gpus) GPUS_PER_NODE=${2:?$1 needs a number}; shift 2 ;;
            --gpus-per-node=*|--gpus=*) GPUS_PER_NODE=${1#*=}; shift ;;
            *) echo "[pipeline] unknown option $1: STAGE=pipeline takes --nodes N and --gpus-per-node N" >&2
               return 2 ;;
        esac
    done
    for v in "${NODES:-1}" "${GPUS_PER_NODE:-1}"; do
        case "$v" in ''|*[!0-9]*|0) echo "[pipeline] --nodes/--gpus-per-node must be positive integers, got $v" >&2
                                    return 2 ;;
        esac
    done
}

# has_any "WORDS" OPTION...: whether one of the options appears among the words
has_any() {
    local words=" $1 " opt; shift
    for opt in "$@"; do case "$words" in *" $opt "*|*" $opt="*) return 0 ;; esac; done
    return 1
}

# weights_in_dir PATTERN: whether $BSYNTH_WEIGHTS_DIR (or a sub-folder) holds a file matching PATTERN
weights_in_dir() {
    [ -n "${BSYNTH_WEIGHTS_DIR:-}" ] && [ -n "$(find "$BSYNTH_WEIGHTS_DIR" -maxdepth 2 -name "$1" -print -quit 2>/dev/null)" ]
}

# global_batch CONFIG WORLD: "B = micro x accum x WORLD" as the engine will run CONFIG on WORLD ranks
global_batch() {
    "$PYTHON" "${BSYNTH_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}/launchers/slurm_query.py" global-batch "$1" "$2" 2>/dev/null \
        || echo "unknown (bsynth_hpc not importable here)"
}

validate_chain() {
    local problems=() cfg world
    command -v sbatch >/dev/null 2>&1 || problems+=("sbatch is not on PATH: submit the chain from a SLURM login node")
    [ -f "$STORE/zarr.json" ] || problems+=("STORE=$STORE is not a bsynth store (no zarr.json): run \`bsynth prep\` first or set STORE=")
    for cfg in "$@"; do
        [ -f "$cfg" ] || problems+=("config $cfg does not exist: set the stage's *_CONFIG")
    done
    if [ -n "${EVAL_SYNTH_ARGS+set}" ] && ! has_any "${EVAL_SYNTH_ARGS:-}" --weights --allow-random-features \
            && ! weights_in_dir 'resnet_*.pth'; then
        problems+=("the sample-eval job needs MedicalNet weights: put resnet_50_23dataset.pth in \$BSYNTH_WEIGHTS_DIR, set EVAL_SYNTH_ARGS=\"--weights PATH\", or EVAL_SYNTH_ARGS=--allow-random-features for a smoke run")
    fi
    if [ -n "${EVAL_RECON_ARGS+set}" ] && ! has_any "${EVAL_RECON_ARGS:-}" --lpips-weights --no-lpips \
            --allow-random-features && ! weights_in_dir 'alexnet*.pth'; then
        problems+=("the sample-eval job's eval recon needs AlexNet (LPIPS) weights: put alexnet-owt-7be5be79.pth in \$BSYNTH_WEIGHTS_DIR, or set EVAL_RECON_ARGS=--no-lpips (or --allow-random-features)")
    fi
    if [ "${#problems[@]}" -gt 0 ]; then
        printf '[pipeline] %s\n' "${problems[@]}" >&2
        echo "[pipeline] nothing submitted" >&2
        return 2
    fi
    world=$(( ${NODES:-2} * ${GPUS_PER_NODE:-4} ))
    for cfg in "$@"; do
        echo "[pipeline] $cfg on ${NODES:-2} node(s) x ${GPUS_PER_NODE:-4} GPU(s): global batch $(global_batch "$cfg" "$world")"
    done
}

submit_chain() {
    local script=$1; shift
    local dep="" summary="" last=${!#} id stage
    local site=()
    # shellcheck disable=SC2206  # SBATCH_ARGS is a list of options
    site=(${SBATCH_ARGS:-})
    local size=()
    [ -n "${NODES:-}" ] && size+=(--nodes="$NODES")
    [ -n "${GPUS_PER_NODE:-}" ] && size+=(--ntasks-per-node="$GPUS_PER_NODE")
    for stage in "$@"; do
        local extra=("${size[@]}")
        if [ "$stage" = "$last" ]; then extra=(--nodes=1 --ntasks-per-node=1); fi
        id=$(sbatch --parsable ${dep:+--dependency=afterok:$dep} "${site[@]}" "${extra[@]}" \
                 --export=ALL,STAGE="$stage" "$script") \
            || { echo "[pipeline] sbatch failed for stage $stage" >&2; return 1; }
        id=${id%%;*}   # --parsable prints "id[;cluster]"
        summary="$summary${summary:+ -> }$stage $id"
        dep=$id
    done
    echo "submitted $summary"
}

run_encode() {
    srun --kill-on-bad-exit=1 "$PYTHON" -m bsynth_hpc.cli encode --run "$1" --store "$2" --out "$3" --batch-size 1
}
