"""`nnunet-autosam pseudo-labels`: a teacher's labels of a fold's unlabelled cases, as a dataset nnU-Net learns from.

A few-label fold leaves most of a dataset's training cases unused: every case of imagesTr outside the fold's
labelled and validation sets, plus any images the user has without labels (``--unlabelled-images``). One or
more models trained on the fold (a SAM head, nnU-Net, or both) predict those cases with
``nnUNetv2_predict --save_probabilities``; several are averaged by ``nnUNetv2_ensemble``. The student is then
plain nnU-Net on a new dataset that holds the fold's labelled and validation cases with their own labels and
the unlabelled ones with the teacher's, and everything after this command is stock nnU-Net:

- a voxel whose predicted class has a probability below ``--min-confidence`` gets nnU-Net's ``ignore`` label
  (added to dataset.json as the highest label), so the student's loss and its sampling skip it;
  0 keeps every voxel and leaves dataset.json's labels as they are;
- each labelled case appears ``--labelled-weight`` times in the student's training list: nnU-Net draws its
  training cases uniformly from that list, so a labelled case is drawn that many times as often as a
  pseudo-labelled one;
- the student has the source's plans (``nnUNetv2_move_plans_between_datasets``) and is preprocessed by
  ``nnUNetv2_preprocess``; its splits_final.json has one entry, fold 0: training = labelled + unlabelled,
  validation = the fold's own validation cases, so its final validation scores the cases the teacher's did.

Neither the labels of the unlabelled training cases nor anything of imagesTs/labelsTs is read: a test set stays
unseen, and on a few-label fold the labels that the fold pretends not to have stay unused.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_autosam.data.conversion import dataset_folder
from nnunet_autosam.data.verify import image_channels, num_channels_of
from nnunet_autosam.evaluation.report import TRAINED_MARKER
from nnunet_autosam.utilities.atomic import atomic_path, write_json
from nnunet_autosam.utilities.commands import run_command
from nnunet_autosam.utilities.devices import pick_device
from nnunet_autosam.utilities.errors import InputError
from nnunet_autosam.utilities.nnunet_paths import nnunet_folder, resolve_dataset

IGNORE = "ignore"  # nnU-Net's name for the label its loss skips
RECORD = "pseudo_labels.json"  # in the student's raw folder: where each case's label came from


@dataclass(frozen=True)
class Teacher:
    """One trained model of the fold, as nnUNetv2_predict names it."""

    trainer: str
    plans: str
    configuration: str

    @classmethod
    def parse(cls, text: str, configuration: str) -> "Teacher":
        trainer, _, plans = text.partition(":")
        if not trainer or not plans:
            raise InputError(
                f"--teacher {text!r} is not TRAINER:PLANS: write e.g. --teacher AutoSAMTrainer:nnUNetPlans"
            )
        return cls(trainer, plans, configuration)

    @property
    def name(self) -> str:
        """Its model folder's name under $nnUNet_results/DATASET, as nnU-Net builds it."""
        from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

        return convert_trainer_plans_config_to_identifier(self.trainer, self.plans, self.configuration)


def fold_cases(dataset_name: str, fold: int) -> tuple:
    """(labelled, validation) case ids of ``fold`` in the dataset's splits_final.json."""
    splits_file = nnunet_folder("nnUNet_preprocessed") / dataset_name / "splits_final.json"
    if not splits_file.is_file():
        raise InputError(f"{splits_file} not found: write the few-label folds first (nnunet-autosam splits)")
    splits = json.loads(splits_file.read_text(encoding="utf-8"))
    if not 0 <= fold < len(splits):
        raise InputError(f"{splits_file} has folds 0 to {len(splits) - 1}, not {fold}: pass one of them with --fold")
    return list(splits[fold]["train"]), list(splits[fold]["val"])


def check_models(dataset_name: str, teachers, fold: int, student_plans: str) -> None:
    """Every teacher trained on the fold, and the student's plans there, before anything is predicted."""
    for teacher in teachers:
        model = nnunet_folder("nnUNet_results") / dataset_name / teacher.name / f"fold_{fold}" / TRAINED_MARKER
        if not model.is_file():
            raise InputError(
                f"{model} not found: train the teacher first (nnUNetv2_train {dataset_name} "
                f"{teacher.configuration} {fold} -tr {teacher.trainer} -p {teacher.plans})"
            )
    plans_file = nnunet_folder("nnUNet_preprocessed") / dataset_name / f"{student_plans}.json"
    if not plans_file.is_file():
        raise InputError(f"{plans_file} not found: pass the plans the student is preprocessed with (-p)")


def unlabelled_cases(raw: Path, dataset_json: dict, labelled, validation, extra_images: Path | None) -> dict:
    """Case id -> channel files of every case the student gets the teacher's labels for: imagesTr's cases outside
    the fold, then ``extra_images``'s. Label files are not looked at."""
    channels, ending = num_channels_of(dataset_json), dataset_json["file_ending"]
    problems: list[str] = []
    in_fold = set(labelled) | set(validation)
    found = image_channels(raw / "imagesTr", channels, ending, problems)
    cases = {case: images for case, images in found.items() if case not in in_fold}
    if extra_images is not None:
        extra = image_channels(extra_images, channels, ending, problems)
        clashes = sorted(set(extra) & set(found))
        if clashes:
            problems.append(f"{extra_images} has {clashes[0]}, a case of imagesTr too: rename it")
        cases.update(extra)
    if problems:
        raise InputError(f"{problems[0]}: fix the file names")
    if not cases:
        raise InputError(
            f"the fold uses every case of {raw / 'imagesTr'} and no --unlabelled-images were given: "
            f"there is nothing to pseudo-label"
        )
    return cases


def predict_teachers(teachers, dataset_name: str, fold: int, cases: dict, work: Path, device: str, tta: bool) -> Path:
    """Each teacher's prediction of ``cases`` with probabilities, averaged where there are several; returns the
    folder holding CASE.nii.gz-like segmentations and CASE.npz probabilities."""
    inputs = work / "images"
    inputs.mkdir(parents=True)
    for images in cases.values():
        for image in images:
            (inputs / image.name).symlink_to(image.resolve())
    outputs = []
    for teacher in tqdm(teachers, desc="Teachers predicting", unit="model"):
        output = work / teacher.name
        command = ["nnUNetv2_predict", "-i", str(inputs), "-o", str(output), "-d", dataset_name]
        command += ["-c", teacher.configuration, "-tr", teacher.trainer, "-p", teacher.plans, "-f", str(fold)]
        command += ["-device", device, "--save_probabilities", *([] if tta else ["--disable_tta"])]
        run_command(command)
        outputs.append(output)
    if len(outputs) == 1:
        return outputs[0]
    ensemble = work / "ensemble"
    run_command(["nnUNetv2_ensemble", "-i", *map(str, outputs), "-o", str(ensemble), "--save_npz"])
    return ensemble


def pseudo_label(segmentation, probabilities: np.ndarray, min_confidence: float, ignore_label: int | None):
    """The teacher's segmentation (a SimpleITK image) with its doubtful voxels set to ``ignore_label``."""
    import SimpleITK as sitk

    labels = sitk.GetArrayFromImage(segmentation)
    if ignore_label is not None:
        if probabilities.shape[1:] != labels.shape:
            raise RuntimeError(f"probabilities {probabilities.shape} do not match the segmentation {labels.shape}")
        labels = np.where(probabilities.max(axis=0) < min_confidence, ignore_label, labels).astype(labels.dtype)
    result = sitk.GetImageFromArray(labels)
    result.CopyInformation(segmentation)
    return result, float(np.mean(labels == ignore_label)) if ignore_label is not None else 0.0


def student_labels(dataset_json: dict, min_confidence: float) -> tuple:
    """The student's dataset.json labels and its ignore label (None where every voxel is kept)."""
    labels = dict(dataset_json["labels"])
    if min_confidence <= 0:
        return labels, None
    if IGNORE in labels:
        raise InputError(f"the dataset already has an {IGNORE!r} label: pass --min-confidence 0")
    if dataset_json.get("regions_class_order") or any(not isinstance(value, int) for value in labels.values()):
        raise InputError(
            "the dataset's labels are regions, whose probabilities are not one per class: pass --min-confidence 0"
        )
    labels[IGNORE] = max(labels.values()) + 1
    return labels, labels[IGNORE]


def write_student(source: Path, target: Path, dataset_json: dict, fold_sets: tuple, predictions: Path, options) -> dict:
    """The student's raw dataset: links to the fold's own images and labels, the teacher's labels of the rest."""
    import SimpleITK as sitk

    labelled, validation, unlabelled = fold_sets
    ending, channels = dataset_json["file_ending"], num_channels_of(dataset_json)
    labels, ignore_label = student_labels(dataset_json, options.min_confidence)
    own = image_channels(source / "imagesTr", channels, ending, [])
    ignored = {}
    with atomic_path(target) as tmp:
        (tmp / "imagesTr").mkdir(parents=True)
        (tmp / "labelsTr").mkdir()
        for case in [*labelled, *validation]:
            label = source / "labelsTr" / f"{case}{ending}"
            if case not in own or not label.is_file():
                raise InputError(f"{case} of the fold has no image or no label in {source}: write the splits again")
            for image in own[case]:
                (tmp / "imagesTr" / image.name).symlink_to(image.resolve())
            (tmp / "labelsTr" / label.name).symlink_to(label.resolve())
        for case, images in tqdm(unlabelled.items(), desc="Writing pseudo-labels", unit="case"):
            for image in images:
                (tmp / "imagesTr" / image.name).symlink_to(image.resolve())
            probabilities = np.load(predictions / f"{case}.npz")["probabilities"]
            segmentation = sitk.ReadImage(str(predictions / f"{case}{ending}"))
            label_image, ignored[case] = pseudo_label(segmentation, probabilities, options.min_confidence, ignore_label)
            sitk.WriteImage(label_image, str(tmp / "labelsTr" / f"{case}{ending}"), True)
        record = {
            "source": source.name,
            "fold": options.fold,
            "teachers": [teacher.name for teacher in options.teachers],
            "min_confidence": options.min_confidence,
            "labelled_weight": options.labelled_weight,
            "labelled": labelled,
            "validation": validation,
            "unlabelled": list(unlabelled),
            "ignored_fraction": ignored,
        }
        student_json = {
            **dataset_json,
            "labels": labels,
            "numTraining": len(labelled) + len(validation) + len(unlabelled),
            "pseudo_labels": f"{RECORD}: {len(unlabelled)} cases labelled by {source.name} fold {options.fold}",
        }
        write_json(student_json, tmp / "dataset.json", sort_keys=False)
        write_json(record, tmp / RECORD)
    return record


def prepare_student(source_name: str, target: Path, record: dict, plans: str, configuration: str, num_processes: int):
    """The student's plans (the source's), preprocessed data and its one fold."""
    preprocessed = nnunet_folder("nnUNet_preprocessed") / target.name
    if preprocessed.exists():
        shutil.rmtree(preprocessed)
    preprocessed.mkdir(parents=True)
    shutil.copyfile(target / "dataset.json", preprocessed / "dataset.json")  # nnUNetv2_preprocess reads it there
    # nnUNetv2_train copies the fingerprint beside its model; the student's plans were made from the source's
    source_preprocessed = nnunet_folder("nnUNet_preprocessed") / source_name
    shutil.copyfile(source_preprocessed / "dataset_fingerprint.json", preprocessed / "dataset_fingerprint.json")
    student_id = target.name[len("Dataset") : len("Dataset") + 3]
    run_command(
        ["nnUNetv2_move_plans_between_datasets", "-s", source_name, "-t", student_id, "-sp", plans, "-tp", plans]
    )
    run_command(
        ["nnUNetv2_preprocess", "-d", student_id, "-plans_name", plans, "-c", configuration, "-np", str(num_processes)]
    )
    training = record["labelled"] * record["labelled_weight"] + record["unlabelled"]
    write_json([{"train": training, "val": record["validation"]}], preprocessed / "splits_final.json")


def run(args) -> None:
    source_name = resolve_dataset(args.dataset)
    source = nnunet_folder("nnUNet_raw") / source_name
    dataset_json = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
    if args.labelled_weight < 1:
        raise InputError(f"--labelled-weight {args.labelled_weight} is below 1: give a whole number of at least 1")
    if not 0 <= args.min_confidence < 1:
        raise InputError(
            f"--min-confidence {args.min_confidence} is outside [0, 1): give e.g. 0.9, or 0 to keep every voxel"
        )
    args.teachers = [Teacher.parse(text, args.configuration) for text in args.teacher]
    student_labels(dataset_json, args.min_confidence)  # refuse before hours of prediction
    labelled, validation = fold_cases(source_name, args.fold)
    check_models(source_name, args.teachers, args.fold, args.plans)
    extra = Path(args.unlabelled_images) if args.unlabelled_images else None
    if extra is not None and not extra.is_dir():
        raise InputError(f"--unlabelled-images {extra} is not a folder: give the folder of CASE_XXXX images")
    unlabelled = unlabelled_cases(source, dataset_json, labelled, validation, extra)
    name = args.name or f"{source_name.split('_', 1)[1]}_pseudo_fold{args.fold}"
    target = dataset_folder(args.student_id, name, args.overwrite)
    print(
        f"{source_name} fold {args.fold}: {len(labelled)} labelled, {len(validation)} validation and "
        f"{len(unlabelled)} unlabelled cases"
    )
    work = nnunet_folder("nnUNet_results") / target.name / "teacher_predictions"
    with atomic_path(work) as tmp:
        device = pick_device(args.device).type  # nnUNetv2_predict takes cuda, cpu or mps
        predictions = predict_teachers(args.teachers, source_name, args.fold, unlabelled, tmp, device, args.tta)
        record = write_student(source, target, dataset_json, (labelled, validation, unlabelled), predictions, args)
        shutil.rmtree(tmp / "images")
    prepare_student(source_name, target, record, args.plans, args.configuration, args.num_processes)
    print(f"Wrote {target} and its preprocessed data; the teachers' predictions are in {work}")
    print(f"Next: nnUNetv2_train {target.name} {args.configuration} 0 -tr nnUNetTrainer -p {args.plans}")


def add_parser(subparsers) -> None:
    from nnunetv2.configuration import default_num_processes

    parser = subparsers.add_parser(
        "pseudo-labels",
        help="a new dataset of a fold's labelled cases and a teacher's labels of its unlabelled ones, for nnU-Net",
        description="Predict the cases a few-label fold leaves unlabelled (imagesTr outside the fold, plus "
        "--unlabelled-images) with the fold's trained teacher(s), and write a student dataset (a new id) of the "
        "fold's labelled and validation cases with their labels and the rest with the teacher's, planned with "
        "the source's plans, preprocessed, with one fold: train it with nnUNetv2_train STUDENT 2d 0.",
    )
    parser.add_argument("dataset", metavar="DATASET", help="the source dataset: id or DatasetXXX_NAME")
    parser.add_argument("-f", "--fold", type=int, required=True, help="the few-label fold the teachers trained on")
    parser.add_argument(
        "--teacher",
        action="append",
        required=True,
        metavar="TRAINER:PLANS",
        help="a trained model of the fold, e.g. AutoSAMTrainer:nnUNetPlans_lite_medsam; repeat it to average several",
    )
    parser.add_argument("--student-id", type=int, required=True, help="id of the student dataset")
    parser.add_argument("--name", help="name of the student dataset (default: SOURCE_pseudo_foldF)")
    parser.add_argument(
        "-p", "--plans", default="nnUNetPlans", help="the source's plans the student is preprocessed with"
    )
    parser.add_argument("-c", "--configuration", default="2d", help="configuration of teachers and student")
    parser.add_argument(
        "--min-confidence",
        type=float,
        default=0.0,
        help="voxels whose predicted class has a lower probability get nnU-Net's ignore label (default 0: keep all)",
    )
    parser.add_argument(
        "--labelled-weight",
        type=int,
        default=1,
        help="each labelled case is drawn this many times as often (default 1)",
    )
    parser.add_argument("--unlabelled-images", help="a folder of CASE_XXXX images without labels, pseudo-labelled too")
    parser.add_argument("--device", help="cuda or cpu (default: cuda where available)")
    parser.add_argument("--no-tta", dest="tta", action="store_false", help="teachers predict without mirroring")
    parser.add_argument("-np", "--num-processes", type=int, default=default_num_processes, help="preprocessing workers")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing student dataset")
    parser.set_defaults(func=run)
