# Helpers for the STAGE=pipeline mode of launchers/*.slurm (sourced; not submitted on its own).
#
# submit_chain SCRIPT STAGE... submits one job per stage, each depending (afterok) on the one
# before; the last stage (sampling/evaluation) runs on one node with one task. Every training job
# requeues itself on preemption, so a chain survives preemptions and lost nodes.
# run_encode VAE_RUN STORE LATENTS encodes a store data-parallel over the job's tasks (rank r takes
# volumes r::world); a rerun skips latents already written.

submit_chain() {
    local script=$1; shift
    local dep="" summary="" last=${!#} id stage
    for stage in "$@"; do
        local extra=()
        if [ "$stage" = "$last" ]; then extra=(--nodes=1 --ntasks-per-node=1); fi
        id=$(sbatch --parsable ${dep:+--dependency=afterok:$dep} "${extra[@]}" --export=ALL,STAGE="$stage" "$script") \
            || { echo "[pipeline] sbatch failed for stage $stage" >&2; return 1; }
        summary="$summary${summary:+ -> }$stage $id"
        dep=$id
    done
    echo "submitted $summary"
}

run_encode() {
    srun --kill-on-bad-exit=1 "$PYTHON" -m bsynth_hpc.cli encode --run "$1" --store "$2" --out "$3" --batch-size 1
}
