"""Custom-resolver demo, step 2: ``Required(resolver=...)`` turns an args group into an
object before the job sees it. Both annotation styles work: ``Annotated[T, Required(...)]``
and ``param: T = Required(...)``; ``alias`` picks a dotted path."""

import json
from dataclasses import asdict, dataclass
from typing import Annotated

import labtasker
from labtasker import Required


@dataclass
class Optimizer:
    name: str
    lr: float


@dataclass
class Data:
    path: str
    batch_size: int


@labtasker.loop()
def main(
    optim: Annotated[Optimizer, Required(resolver=lambda group: Optimizer(**group))],
    data: Data = Required(resolver=lambda group: Data(**group)),
    batch_size: str = Required(alias="data.batch_size", resolver=lambda n: f"bs={n}"),
):
    assert isinstance(optim, Optimizer) and isinstance(data, Data), (optim, data)
    with open("resolver-demo-results.jsonl", "a") as out:
        out.write(
            json.dumps(
                {
                    "task_id": labtasker.task_info().task_id,
                    "optim": asdict(optim),
                    "data": asdict(data),
                    "batch_size": batch_size,
                }
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
