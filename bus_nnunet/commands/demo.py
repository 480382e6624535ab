"""``bus-nnunet demo``: the whole pipeline on built-in synthetic data, in a few minutes on a CPU."""


def register(subparsers):
    from bus_nnunet.io_utils import OVERWRITE_HELP
    p = subparsers.add_parser("demo", help="convert, plan, train, predict and evaluate on built-in synthetic data")
    p.add_argument("-o", "--out", default="demo_output", help="demo folder (default: demo_output)")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainerUS", help="trainer to train (default: nnUNetTrainerUS)")
    p.add_argument("--quick", action="store_true", help="smaller, quicker run (~2 min, 16 images of 64 px); must show learning too")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=run)


def run(args) -> int:
    from bus_nnunet.demo import run_demo
    run_demo(args.out, args.trainer, args.quick, args.overwrite, args.device)  # raises when nothing was learned
    return 0
