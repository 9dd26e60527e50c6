#!/bin/bash
# Resume each ACDC prediction once its test tiles are prefilled (paused meanwhile so the batched prefill runs alone).
until grep -q "prefill acdc_2p5d" prefill.log; do sleep 10; done; kill -CONT 20019; date; echo "resumed 2D"
until grep -q DONE prefill.log; do sleep 10; done; kill -CONT 21355; date; echo "resumed 2.5D"
