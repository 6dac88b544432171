"""The code that runs next to student code, in the sandboxed child (and in the kernel).

Everything here imports only the standard library, torch and safetensors, and holds nothing
secret: no reference, no hidden input, no seed. ``autograder.sandbox.launch`` copies this
package, as it is, into the sandbox; the fork server imports it from there, never from the
course tree.

- ``executor``: ``Call`` and ``Result``, and ``execute_call`` that turns one into the other;
- ``operations``: the forbidden operations, and the watch that sees them reached;
- ``codec``: the data-only wire format (JSON + safetensors, nothing unpickled);
- ``server``, ``confine``, ``child``: the fork server, the confinement of each child, and
  the child's loop over the submission's cells and calls.
"""
