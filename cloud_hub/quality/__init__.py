"""Model quality from ground truth: labels joined to the predictions they are about (by
prediction id), and the accuracy, precision, recall, F1, RMSE and MAE they give, with confidence
intervals, per device, cohort and model version."""
