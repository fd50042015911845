package bench

import (
	"context"
	"strings"
	"testing"
)

func TestRunScaleRefusesSmallMesh(t *testing.T) {
	_, err := RunScale(context.Background(), ScaleOptions{Sizes: []int{3, 10}, Called: 5})
	if err == nil || !strings.Contains(err.Error(), "smaller than the 5") {
		t.Errorf("RunScale(3 services, 5 called) = %v, want an error naming the sizes", err)
	}
}

func TestWriteScaleTable(t *testing.T) {
	r := &ScaleReport{
		Results: []ScaleResult{
			{Services: 10, Called: 5, RSSBytes: 16_000_000, HWMBytes: 17_000_000, Destinations: 5, Requests: 1000},
			{Services: 5000, Called: 5, RSSBytes: 18_000_000, HWMBytes: 18_500_000, Destinations: 5, Requests: 1000, Errors: 2},
		},
		Ratio:  1.125,
		Budget: check("sidecar RSS, 5,000 services ÷ 10 (permissive, app calls 5)", "≤ 1.10", 1.125, 1.10, "×", "detail"),
	}
	var b strings.Builder
	if err := WriteScaleTable(&b, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"  5000            18.0       18.5             5         2\n",
		"RSS 5000 services ÷ 10 services: 1.125",
		"not met      sidecar RSS, 5,000 services ÷ 10",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
