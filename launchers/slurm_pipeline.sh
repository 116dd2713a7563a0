# Helpers for the STAGE=pipeline mode of launchers/*.slurm (sourced; not submitted on its own).
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

submit_chain() {
    local script=$1; shift
    local dep="" summary="" last=${!#} id stage
    local site=()
    # shellcheck disable=SC2206  # SBATCH_ARGS is a list of options
    site=(${SBATCH_ARGS:-})
    for stage in "$@"; do
        local extra=()
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
