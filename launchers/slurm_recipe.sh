# The body of every launchers/<recipe>.slurm (sourced by them; not submitted on its own): the jobs of one
# registered recipe, read from its Recipe (bsynth_hpc/recipes/<recipe>/__init__.py: default_stage, configs,
# pipeline) through launchers/slurm_query.py.
#
# The recipe's .slurm sets, before sourcing this file:
#   RECIPE       the registered recipe name
#   STAGE_VARS   the environment prefix of each training stage of its pipeline, in order ("VAE LDM": the
#                first training stage reads VAE_RUN, VAE_CONFIG, VAE_ARGS, the second LDM_RUN, LDM_CONFIG, LDM_ARGS)
# and after it (the settings below are set by then): LATENTS (the encode job's output), SAMPLES and the other
# settings of its finishing job, exported so that the chain's jobs inherit them; one function per finishing
# job of the pipeline, finish_<name> with - as _ (sample-eval -> finish_sample_eval), run in the checkout;
# then `run_stage "$@"`.
#
# Settings this file provides (each from the environment when set): STAGE (default: the recipe's
# default_stage), STORE (data/store.zarr), RUNS (runs), N_SAMPLES (64), PYTHON (python), EXTRA_ARGS (key=value
# overrides for every training stage), and per training stage <P>_RUN ($RUNS/<stage>), <P>_CONFIG (the
# recipe's default config for it), <P>_ARGS (its key=value overrides).
#
# run_stage dispatches on STAGE:
#   pipeline          (bash, on the login node) validate, then submit the whole chain as dependent jobs
#                     (slurm_pipeline.sh; `--nodes N --gpus-per-node N` size the training jobs)
#   encode            encode STORE into LATENTS with the run of the training stage before it, over the job's tasks
#   a finishing job   finish_<name>
#   a training stage  its <P>_RUN / <P>_CONFIG; stages after the encode job also get recipe.latents=$LATENTS
#   any other stage   RUN_DIR $RUNS/<stage>, CONFIG configs/<stage>.yaml
# CONFIG and RUN_DIR override the stage's defaults (one job only). Training goes through slurm_train.sh.

REPO=${BSYNTH_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
PYTHON=${PYTHON:-python}
SELF="$REPO/launchers/$RECIPE.slurm"

# shellcheck source=launchers/slurm_pipeline.sh
source "$REPO/launchers/slurm_pipeline.sh"

if ! chain=$("$PYTHON" "$REPO/launchers/slurm_query.py" chain "$RECIPE"); then
    echo "[slurm] cannot read recipe '$RECIPE' from bsynth_hpc with PYTHON=$PYTHON: set PYTHON to the" \
         "interpreter of the environment bsynth_hpc is installed in" >&2
    exit 2
fi
eval "$chain"   # DEFAULT_STAGE, CHAIN_NAMES, CHAIN_KINDS, CHAIN_STAGES, CHAIN_CONFIGS

STAGE=${STAGE:-$DEFAULT_STAGE}
STORE=${STORE:-data/store.zarr}
RUNS=${RUNS:-runs}
N_SAMPLES=${N_SAMPLES:-64}
EXTRA_ARGS=${EXTRA_ARGS:-}

# CHAIN_VARS[i]: the prefix of chain job i when it trains a stage; STAGE_SETTINGS: every per-stage setting
read -r -a _prefixes <<< "$STAGE_VARS"
CHAIN_VARS=()
STAGE_SETTINGS=()
_n=0
for _i in "${!CHAIN_NAMES[@]}"; do
    CHAIN_VARS[_i]=""
    [ "${CHAIN_KINDS[_i]}" = train ] || continue
    _p=${_prefixes[_n]:?"$RECIPE.slurm: STAGE_VARS names fewer prefixes than the recipe has training stages"}
    _n=$((_n + 1))
    CHAIN_VARS[_i]=$_p
    _run=${_p}_RUN _config=${_p}_CONFIG _args=${_p}_ARGS
    printf -v "$_run" '%s' "${!_run:-$RUNS/${CHAIN_STAGES[_i]}}"
    printf -v "$_config" '%s' "${!_config:-${CHAIN_CONFIGS[_i]}}"
    printf -v "$_args" '%s' "${!_args:-}"
    STAGE_SETTINGS+=("$_run" "$_config" "$_args")
done
unset _prefixes _n _i _p _run _config _args

# chain_index NAME: the position of job NAME in the chain (nothing printed when it is not one)
chain_index() {
    local i
    for i in "${!CHAIN_NAMES[@]}"; do
        if [ "${CHAIN_NAMES[i]}" = "$1" ]; then echo "$i"; return 0; fi
    done
    return 1
}

# training_run_before I: the run directory of the last training stage before chain job I
training_run_before() {
    local i run=""
    for ((i = 0; i < $1; i++)); do
        if [ -n "${CHAIN_VARS[i]}" ]; then run=${CHAIN_VARS[i]}_RUN; fi
    done
    [ -n "$run" ] && echo "${!run}"
}

# after_encode I: whether an encode job comes before chain job I (its stage trains on the latents)
after_encode() {
    local i
    for ((i = 0; i < $1; i++)); do [ "${CHAIN_KINDS[i]}" = encode ] && return 0; done
    return 1
}

submit_pipeline() {
    local configs=() names=() p c
    chain_options "$@" || exit $?
    for p in "${CHAIN_VARS[@]}"; do
        [ -n "$p" ] || continue
        c=${p}_CONFIG
        configs+=("${!c}")
        names+=("${p}_CONFIG" "${p}_RUN")
    done
    drop_single_stage_settings "$(IFS=,; echo "${names[*]}" | sed 's/,/, /g')"
    validate_chain "${configs[@]}" || exit $?
    export STORE RUNS N_SAMPLES PYTHON EXTRA_ARGS "${STAGE_SETTINGS[@]}"
    submit_chain "$SELF" "${CHAIN_NAMES[@]}"
    exit $?
}

run_stage() {
    local i p config run args
    if [ "$STAGE" = pipeline ]; then submit_pipeline "$@"; fi
    i=$(chain_index "$STAGE")
    case "${i:+${CHAIN_KINDS[i]}}" in
      encode)
        cd "$REPO" || exit 1
        run_encode "$(training_run_before "$i")" "$STORE" "${LATENTS:?$RECIPE.slurm must set LATENTS}"
        exit $? ;;
      finish)
        cd "$REPO" || exit 1
        if ! declare -F "finish_${STAGE//-/_}" >/dev/null; then
            echo "[slurm] $RECIPE.slurm defines no function finish_${STAGE//-/_} for its job $STAGE" >&2
            exit 2
        fi
        "finish_${STAGE//-/_}"
        exit $? ;;
      train)
        p=${CHAIN_VARS[i]}
        run=${p}_RUN config=${p}_CONFIG args=${p}_ARGS
        RUN_DIR=${RUN_DIR:-${!run}}
        CONFIG=${CONFIG:-${!config}}
        EXTRA_ARGS="${!args} $EXTRA_ARGS"
        if after_encode "$i"; then
            EXTRA_ARGS="recipe.latents=${LATENTS:?$RECIPE.slurm must set LATENTS} $EXTRA_ARGS"
        fi ;;
      *)
        RUN_DIR=${RUN_DIR:-$RUNS/$STAGE}
        CONFIG=${CONFIG:-configs/$STAGE.yaml} ;;
    esac
    # shellcheck source=launchers/slurm_train.sh
    source "$REPO/launchers/slurm_train.sh"
}
