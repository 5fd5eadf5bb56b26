"""A person in the loop (`reidzoo-review`): the pairs of an eval.py run whose answers change its
decisions most are asked on a local web page (or answered by an oracle in `simulate`), each answer
becomes a must-link or cannot-link, and the run is re-decided under them."""
