"""Training data for ScoreRun: generated items, JSONL/Parquet files, leak-free splits."""

from scoreops.data.generators import BUILTIN_TASKS, generate_items, known_tasks
from scoreops.data.items import Item, json_safe, normalize_question
from scoreops.data.loading import LoadReport, load_items, read_items, row_to_item, save_items
from scoreops.data.split import dedupe_items, split_train_eval

__all__ = [
    "BUILTIN_TASKS",
    "Item",
    "LoadReport",
    "dedupe_items",
    "generate_items",
    "json_safe",
    "known_tasks",
    "load_items",
    "normalize_question",
    "read_items",
    "row_to_item",
    "save_items",
    "split_train_eval",
]
