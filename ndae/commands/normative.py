"""`ndae normative fit`: fit the normative model of z_sem on the controls."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "normative",
        help="fit the normative model of the controls' z_sem",
        description="Normative model of the semantic latent z_sem given age, sex and site.",
    )
    actions = parser.add_subparsers(dest="normative_command", metavar="ACTION", required=True)
    fit = actions.add_parser(
        "fit",
        help="fit on the controls of a latents file",
        description="Fit on the manifest's controls (group == control) and write model.npz, "
        "model.json and the in-sample calibration to OUT.",
    )
    fit.add_argument("--latents", required=True, help="latents.npz with arrays subject, z_sem (n × d)")
    fit.add_argument("--manifest", required=True, help="manifest.csv with subject, site, age, sex, group")
    fit.add_argument("--out", required=True, help="output folder, usually RUN/normative")
    fit.add_argument("--age-range", nargs=2, type=float, default=(18.0, 90.0), metavar=("LOW", "HIGH"),
                     help="declared age range of the age basis (default 18 90; same at every site)")
    fit.add_argument("--basis", choices=("natural_spline", "polynomial", "linear"), default="natural_spline",
                     help="age basis (default natural_spline)")
    fit.add_argument("--knots", type=int, default=4, help="natural-spline knots incl. boundaries (default 4)")
    fit.add_argument("--degree", type=int, default=2, help="polynomial degree (default 2)")
    fit.add_argument("--prior-precision", type=float, default=1e-3, help="ridge prior precision (default 1e-3)")
    from ndae.run_folder import add_rerun_flags

    add_rerun_flags(fit, can_resume=False)
    fit.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ndae.normative.design import DesignSpec
    from ndae.normative.files import fit_normative

    from ndae.run_folder import claim_output

    design = DesignSpec(age_range=tuple(args.age_range), basis=args.basis, n_knots=args.knots, degree=args.degree)
    settings = {key: value for key, value in vars(args).items() if key not in ("func", "force")}
    with claim_output(args.out, command="normative fit", settings=settings, force=args.force, can_resume=False,
                      outputs=("model.npz", "model.json", "calibration_in_sample.csv",
                               "calibration_in_sample.json")) as claim:
        model = fit_normative(args.latents, args.manifest, args.out, design=design,
                              prior_precision=args.prior_precision)
        claim.finish()
    sites = ", ".join(f"{name} ({n:g})" for name, n in zip(model.site_names, model.site_n)) or "none"
    print(f"normative model of {model.n_features} features on {model.n_controls:g} controls "
          f"(sites: {sites}); written to {args.out}")
    return 0
